"""The workspace's side of the contract: snapshots of `/workspace` in the store (taken by the
runner, restored by the runner or the pod's init step) and the run config's workspace parts."""

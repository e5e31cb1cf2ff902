"""agentsession-gateway: the runner pod's trust boundary, a native sidecar that holds every
credential, meters Messages API spend at the wire, serves the transcript store and reports the
attempt to the operator."""

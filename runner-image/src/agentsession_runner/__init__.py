"""agentsession-runner: runs one Claude Agent SDK session inside a pod, persisting to a SessionStore."""

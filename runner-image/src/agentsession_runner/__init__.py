"""agentsession-runner: runs one Claude Agent SDK session in a pod, persisting to a SessionStore."""

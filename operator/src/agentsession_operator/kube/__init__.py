"""The one place the operator talks to the Kubernetes API (besides kopf's own watches)."""

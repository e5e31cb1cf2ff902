"""agentsession-operator: reconciles AgentSession resources into runner pods."""

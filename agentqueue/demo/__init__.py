"""`agentqueue demo`: conversations through an embedded broker, or the local cloud path."""

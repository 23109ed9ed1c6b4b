"""The HTTP ingress: agent requests as JSON or CloudEvents, signed webhooks, results by id."""

"""Runnable example apps: `agentqueue worker --app examples.weather:app`."""

"""Servers and emulators for development and tests: RabbitMQ, Redis, MNS, FC and OpenAI."""

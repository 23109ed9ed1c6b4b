"""The same jobs through agentqueue, raw aio-pika and the peers, against one RabbitMQ."""

"""servio-bridge: Servio HMS webhooks in, one confirmed RabbitMQ message per event out."""

__version__ = "0.1.0"

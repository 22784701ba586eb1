"""Async inference: jobs go through a queue (RabbitMQ or in-process), workers run batched
forward passes, results land in a store (Redis or in-memory) that ``GET /result`` reads.

- ``jobs``: the message on the queue and the result record.
- ``broker``: the brokers' interface and the in-process broker; ``rabbitmq``: the RabbitMQ
  broker (durable quorum queue, persistent messages, publisher confirms, dead-letter queue).
- ``results``: the result stores' interface (first final write wins, records expire) and the
  in-memory store; ``redis_results``: the Redis store.
- ``rabbitmq`` and ``redis_results`` are imported only where AMQP_URL / REDIS_URL are set.
- ``worker``: the worker loop shared by ``lab2prod worker`` and the API's embedded mode.
- ``lifecycle``: what the API starts and stops (``start_async`` / ``stop_async``).
"""

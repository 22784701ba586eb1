"""Async inference: jobs go through a queue (RabbitMQ or in-process), workers run batched
forward passes, results land in a store (Redis or in-memory) that ``GET /result`` reads.

- ``jobs``: the message on the queue and the result record.
- ``broker``: the RabbitMQ broker (durable quorum queue, persistent messages, publisher
  confirms, dead-letter queue) and its in-process stand-in, behind one interface.
- ``results``: the result store (Redis with TTL, or in-memory with TTL), first final write wins.
- ``worker``: the worker loop shared by ``lab2prod worker`` and the API's embedded mode.
- ``lifecycle``: what the API starts and stops (``start_async`` / ``stop_async``).
"""

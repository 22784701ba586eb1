"""RabbitMQ broker and Redis result store, for real: confirms, durability, dead letters, TTL."""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika
import numpy as np
import pytest
from aio_pika.exceptions import ChannelPreconditionFailed
from support.servers import free_port

from service.queue.broker import BrokerUnavailable
from service.queue.jobs import Job, JobResult, JobStatus
from service.queue.rabbitmq import RabbitBroker, dead_letter_names
from service.queue.redis_results import RedisResultStore
from service.queue.worker import BatchPrediction, JobWorker

pytestmark = [pytest.mark.rabbitmq, pytest.mark.redis]


class SumModulo10:
    async def predict(self, images: np.ndarray, ref: str | None) -> BatchPrediction:
        classes = images.reshape(len(images), -1).astype(np.int64).sum(axis=1) % 10
        return BatchPrediction(np.eye(10)[classes], "v-test")


def job_for(value: int) -> Job:
    image = np.zeros((28, 28), np.uint8)
    image[5, 5] = value
    return Job.create(image)


async def test_a_confirmed_job_is_persistent_on_a_durable_quorum_queue(amqp_url, queue_name):
    broker = RabbitBroker(amqp_url, queue_name)
    job = job_for(42)
    await broker.publish(job)  # returns only after the broker's confirm
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        with pytest.raises(ChannelPreconditionFailed):  # it is durable and a quorum queue
            await channel.declare_queue(queue_name, durable=False)
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        message = await queue.get(timeout=5)
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.message_id == job.inference_id
        assert message.headers.get("x-delivery-count", 0) == 0
        await message.ack()
    finally:
        await connection.close()
        await broker.close()


async def test_an_unreachable_broker_refuses_at_once_and_keeps_refusing_quickly():
    broker = RabbitBroker(f"amqp://guest:guest@127.0.0.1:{free_port()}/", "never")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="unreachable") as caught:
        await broker.publish(job_for(1))
    assert caught.value.retry_after_s >= 1
    with pytest.raises(BrokerUnavailable):  # within the cooldown: no new connection attempt
        await broker.publish(job_for(2))
    assert time.monotonic() - started < 3
    assert not (await broker.status()).ok


async def test_a_delivery_settled_after_its_connection_closed_is_redelivered(
    amqp_url, queue_name
):
    broker = RabbitBroker(amqp_url, queue_name)
    job = job_for(7)
    await broker.publish(job)
    try:
        inbox = await broker.start_consuming(prefetch=1)
        delivery = await asyncio.wait_for(inbox.get(), timeout=10)
        await broker.close()  # the channel it came on is gone
        with pytest.raises(BrokerUnavailable, match="could not settle"):
            await delivery.ack()
        broker = RabbitBroker(amqp_url, queue_name)
        inbox = await broker.start_consuming(prefetch=1)
        redelivered = await asyncio.wait_for(inbox.get(), timeout=10)
        assert (redelivered.message_id, redelivered.attempt) == (job.inference_id, 2)
        await redelivered.ack()
    finally:
        await broker.close()


@pytest.mark.parametrize(
    ("poison", "reason"),
    [
        (b'{"schema": "lab2prod-job/1", "pixels_b64": "AAAA', "not JSON"),  # truncated
        (b'{"schema": "lab2prod-job/1", "pixels_b64": "AAAA"}', "784 bytes"),  # wrong shape
    ],
)
async def test_a_poison_message_ends_in_the_dead_letter_queue_with_a_failed_result(
    amqp_url, queue_name, redis_url, poison, reason
):
    broker = RabbitBroker(amqp_url, queue_name)
    store = RedisResultStore(redis_url, ttl_s=60)
    good = job_for(7)
    poison_id = str(uuid.uuid4())
    await store.add_pending(poison_id)
    await broker.publish(good)
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.default_exchange.publish(
        aio_pika.Message(
            poison, message_id=poison_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        ),
        routing_key=queue_name,
    )
    worker = JobWorker(
        await broker.start_consuming(prefetch=8), store, SumModulo10(), max_attempts=3
    )
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(20):
            while (record := await store.get(poison_id)) is None or not record.final:
                await asyncio.sleep(0.05)
    finally:
        await broker.stop_consuming()
        worker.stop()
        await running

    assert record.status is JobStatus.FAILED
    assert reason in record.error and record.attempts == 3
    assert (await store.get(good.inference_id)).predicted_class == 7
    dead_queue = await channel.declare_queue(dead_letter_names(queue_name)[1], passive=True)
    dead = await dead_queue.get(timeout=5)
    assert dead.message_id == poison_id
    assert dead.headers["x-death"][0]["reason"] == "rejected"
    await dead.ack()
    await connection.close()
    await broker.close()
    await store.close()


async def test_dead_letters_are_kept_for_dead_letter_ttl_s_then_dropped(amqp_url, queue_name):
    broker = RabbitBroker(amqp_url, queue_name, dead_letter_ttl_s=1)
    await broker.publish(job_for(3))  # connects and declares the queues
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    dead_name = dead_letter_names(queue_name)[1]
    await channel.default_exchange.publish(aio_pika.Message(b"rejected job"), routing_key=dead_name)

    async def dead_count() -> int:
        queue = await channel.declare_queue(dead_name, passive=True)
        return queue.declaration_result.message_count

    assert await dead_count() == 1
    deadline = time.monotonic() + 10
    while await dead_count():
        assert time.monotonic() < deadline, "the dead letter outlived DEAD_LETTER_TTL_S"
        await asyncio.sleep(0.1)
    await connection.close()
    await broker.close()


async def test_redis_results_expire_after_their_ttl(redis_url):
    store = RedisResultStore(redis_url, ttl_s=1)
    iid = str(uuid.uuid4())
    await store.finish_many([JobResult.done(iid, np.eye(10)[4], "v1", attempts=1)])
    assert (await store.get(iid)).predicted_class == 4
    await asyncio.sleep(1.3)
    assert await store.get(iid) is None
    await store.close()


async def test_redis_keeps_the_first_final_result_and_discards_only_pending(redis_url):
    store = RedisResultStore(redis_url, ttl_s=60)
    iid, other = str(uuid.uuid4()), str(uuid.uuid4())
    await store.add_pending(iid)
    first = JobResult.done(iid, np.eye(10)[1], "v1", attempts=1)
    again = JobResult.done(iid, np.eye(10)[2], "v2", attempts=2)
    assert await store.finish_many([first, again]) == [True, False]
    await store.add_pending(iid)  # a late pending write must not hide the result
    await store.discard_pending(iid)
    assert await store.get(iid) == first
    await store.add_pending(other)
    await store.discard_pending(other)
    assert await store.get(other) is None
    await store.close()

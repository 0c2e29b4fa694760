"""Cleaning up after a test's RabbitMQ topology on the shared broker."""

from __future__ import annotations

import aio_pika.abc

from taskwire.rabbitmq import delay_queue_names


async def delete_topology(connection: aio_pika.abc.AbstractConnection, name: str) -> None:
    """Delete everything RabbitTaskQueue declares for queue `name`."""
    channel = await connection.channel()
    await channel.queue_delete(name)
    await channel.queue_delete(f"{name}.dead")
    await channel.exchange_delete(f"{name}.dlx")
    for delay_queue in delay_queue_names(name):
        await channel.queue_delete(delay_queue)

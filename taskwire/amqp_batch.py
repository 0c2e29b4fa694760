"""Many confirmed publishes written as one frame: aiormq's own publish, for a batch.

aiormq's `Channel.basic_publish` takes the channel's lock, registers one confirmation and
queues one ChannelFrame per message, and the connection's writer makes one socket write of
each: at a thousand publishes a second that bookkeeping and those syscalls are a fifth of
the API's CPU. `publish_batch` does the same bookkeeping for N messages under one acquisition
of the lock and queues ONE ChannelFrame holding all their frames; each message keeps its own
delivery tag, confirmation future and message id, so the broker's ack, nack or return still
settles each message on its own.

It writes aiormq's private bookkeeping (`confirmations`, `message_id_delivery_tag`,
`delivery_tag`, `write_queue`, `lock`) exactly as `Channel.basic_publish` of aiormq 7.2.4
does; tests/unit/test_amqp_batch.py fails on any other aiormq version, so an upgrade is
checked against that method before this module is trusted with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import aiormq
from aiormq.abc import ChannelFrame, ConfirmationFrameType
from pamqp import commands as spec
from pamqp.base import Frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

# The aiormq releases whose Channel.basic_publish this module replicates.
AIORMQ_VERSIONS = ("7.2.",)

Confirmation = asyncio.Future[ConfirmationFrameType]


@dataclass(frozen=True, slots=True)
class Message:
    """One mandatory publish to the default exchange. `properties.message_id` must be set and
    unique among the channel's unconfirmed messages: a return finds its message by it."""

    routing_key: str
    body: bytes
    properties: spec.Basic.Properties


async def publish_batch(channel: aiormq.Channel, messages: Sequence[Message]) -> list[Confirmation]:
    """Queue `messages` for the connection's writer as one frame; one confirmation future per
    message, in order, settled as aiormq settles its own: the broker's ack sets a Basic.Ack,
    a nack a DeliveryError, a return a PublishError, a closed channel its close reason.

    Raises (and registers nothing) when the channel is closed or the frame cannot be queued.
    """
    if not messages:
        return []
    if not channel.publisher_confirms:
        raise ValueError("publish_batch needs a channel with publisher confirms")
    frames: list[Frame | ContentHeader | ContentBody] = []
    message_ids: list[str] = []
    for message in messages:
        if len(message.routing_key) > 255:
            raise ValueError("Routing key too long (max 255 bytes)")
        message_id = message.properties.message_id
        if not message_id:
            raise ValueError("every message of a batch needs a message_id")
        message_ids.append(message_id)
        frames.append(
            spec.Basic.Publish(exchange="", routing_key=message.routing_key, mandatory=True)
        )
        frames.append(ContentHeader(properties=message.properties, body_size=len(message.body)))
        frames.extend(_split_body(message.body, channel.max_content_size))
    # Marshalled before anything is registered: a message that cannot be encoded fails the
    # batch without leaving confirmations behind.
    frame = ChannelFrame.marshall(channel_number=channel.number, frames=frames)

    async with channel.lock:  # raises ChannelInvalidStateError once the channel is closed
        first = channel.delivery_tag + 1
        confirmations: list[Confirmation] = []
        for tag, message_id in enumerate(message_ids, start=first):
            # The channel's own futures: closing the channel rejects them with its reason.
            confirmation: Confirmation = channel.create_future()
            channel.confirmations[tag] = confirmation
            channel.message_id_delivery_tag[message_id] = tag
            confirmations.append(confirmation)
        channel.delivery_tag = first + len(message_ids) - 1
        try:
            await channel.write_queue.put(frame)
        except BaseException:
            # The broker has not seen these publishes: give their sequence numbers back while
            # still holding the lock, as aiormq does for one.
            channel.delivery_tag = first - 1
            for tag, (message_id, confirmation) in enumerate(
                zip(message_ids, confirmations, strict=True), start=first
            ):
                channel.confirmations.pop(tag, None)
                if channel.message_id_delivery_tag.get(message_id) == tag:
                    del channel.message_id_delivery_tag[message_id]
                confirmation.cancel()
            raise
    for tag, (message_id, confirmation) in enumerate(
        zip(message_ids, confirmations, strict=True), start=first
    ):
        confirmation.add_done_callback(_Forget(channel, message_id, tag))
    return confirmations


class _Forget:
    """Drops the message id's entry once its confirmation is settled (aiormq's
    forget_message_id), unless a later publish reused the id."""

    __slots__ = ("_channel", "_message_id", "_tag")

    def __init__(self, channel: aiormq.Channel, message_id: str, tag: int) -> None:
        self._channel = channel
        self._message_id = message_id
        self._tag = tag

    def __call__(self, _: Confirmation) -> None:
        tags = self._channel.message_id_delivery_tag
        if tags.get(self._message_id) == self._tag:
            del tags[self._message_id]


def _split_body(body: bytes, max_size: int) -> list[ContentBody]:
    if not body:
        return []
    return [ContentBody(body[start : start + max_size]) for start in range(0, len(body), max_size)]

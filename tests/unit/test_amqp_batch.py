"""publish_batch's bookkeeping, on a stand-in for aiormq's Channel; the real broker's side is in
tests/integration/test_queue_rabbitmq.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any, cast

import aiormq
import pamqp.frame
import pytest
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from taskwire.amqp_batch import AIORMQ_VERSIONS, Message, publish_batch


def test_aiormq_is_a_version_whose_publish_bookkeeping_is_replicated() -> None:
    # publish_batch writes aiormq's private publish bookkeeping as Channel.basic_publish of
    # aiormq 7.2.4 does. Before allowing another version, compare that method with
    # taskwire/amqp_batch.py and update AIORMQ_VERSIONS.
    installed = version("aiormq")
    assert installed.startswith(AIORMQ_VERSIONS), installed


def test_aiormq_channel_still_has_the_attributes_publish_batch_uses() -> None:
    init = aiormq.Channel.__init__.__code__.co_names
    for name in ("confirmations", "message_id_delivery_tag", "delivery_tag", "write_queue"):
        assert name in init
    for name in ("lock", "create_future", "publisher_confirms", "number", "max_content_size"):
        assert hasattr(aiormq.Channel, name) or name in init


class FakeChannel:
    """The part of aiormq.Channel that publish_batch touches."""

    def __init__(self, *, queue_size: int = 0) -> None:
        self.publisher_confirms = True
        self.number = 7
        self.max_content_size = 10
        self.delivery_tag = 41
        self.confirmations: dict[int, asyncio.Future[Any]] = {}
        self.message_id_delivery_tag: dict[str, int] = {}
        self.write_queue: asyncio.Queue[ChannelFrame] = asyncio.Queue(maxsize=queue_size)
        self.closed = False
        self._lock = asyncio.Lock()

    @property
    @asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        if self.closed:
            raise aiormq.exceptions.ChannelInvalidStateError("closed")
        async with self._lock:
            yield

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()


def message(number: int, body: bytes = b'{"task_id":"x"}') -> Message:
    properties = spec.Basic.Properties(delivery_mode=2, message_id=f"id-{number}")
    return Message(f"queue-{number}", body, properties)


def decoded(payload: bytes) -> list[Any]:
    frames = []
    while payload:
        consumed, channel, frame = pamqp.frame.unmarshal(payload)
        assert channel == 7
        frames.append(frame)
        payload = payload[consumed:]
    return frames


async def test_a_batch_is_one_frame_with_each_message_under_its_own_delivery_tag() -> None:
    channel = FakeChannel()
    confirmations = await publish_batch(
        cast("aiormq.Channel", channel), [message(1), message(2, b"")]
    )

    assert channel.write_queue.qsize() == 1
    frames = decoded(channel.write_queue.get_nowait().payload)
    # The 15-byte body is split at max_content_size; an empty body has no body frame.
    assert [type(frame) for frame in frames] == [
        spec.Basic.Publish,
        ContentHeader,
        ContentBody,
        ContentBody,
        spec.Basic.Publish,
        ContentHeader,
    ]
    assert [frame.routing_key for frame in frames if isinstance(frame, spec.Basic.Publish)] == [
        "queue-1",
        "queue-2",
    ]
    assert all(f.mandatory for f in frames if isinstance(f, spec.Basic.Publish))
    assert b"".join(f.value for f in frames if isinstance(f, ContentBody)) == b'{"task_id":"x"}'
    assert channel.delivery_tag == 43
    assert channel.confirmations == {42: confirmations[0], 43: confirmations[1]}
    assert channel.message_id_delivery_tag == {"id-1": 42, "id-2": 43}

    confirmations[0].set_result(spec.Basic.Ack(delivery_tag=42))
    await asyncio.sleep(0)  # done callbacks run on the next turn
    assert channel.message_id_delivery_tag == {"id-2": 43}


async def test_a_batch_cancelled_before_it_is_queued_gives_everything_back() -> None:
    channel = FakeChannel(queue_size=1)
    blocker = ChannelFrame.marshall(channel_number=7, frames=[])
    channel.write_queue.put_nowait(blocker)  # the writer is behind: the queue is full
    sending = asyncio.create_task(
        publish_batch(cast("aiormq.Channel", channel), [message(1), message(2)])
    )
    async with asyncio.timeout(1):
        while not channel.confirmations:
            await asyncio.sleep(0)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending

    assert channel.delivery_tag == 41
    assert channel.confirmations == {}
    assert channel.message_id_delivery_tag == {}
    assert channel.write_queue.get_nowait() is blocker
    assert channel.write_queue.empty()


async def test_a_closed_channel_registers_nothing() -> None:
    channel = FakeChannel()
    channel.closed = True
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await publish_batch(cast("aiormq.Channel", channel), [message(1)])
    assert channel.delivery_tag == 41
    assert channel.confirmations == {}
    assert channel.write_queue.empty()


async def test_a_message_without_an_id_is_refused_before_anything_is_registered() -> None:
    channel = FakeChannel()
    nameless = Message("queue", b"x", spec.Basic.Properties())
    with pytest.raises(ValueError, match="message_id"):
        await publish_batch(cast("aiormq.Channel", channel), [message(1), nameless])
    assert channel.confirmations == {}
    assert channel.write_queue.empty()

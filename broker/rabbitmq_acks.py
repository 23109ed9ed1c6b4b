"""The acks of one consumer channel, sent together.

A worker settles many events in the same turn of the event loop when their reply confirms
arrive in one read. Each `basic.ack` on its own is a frame and a method for RabbitMQ to
process; here the acks asked for in one turn leave at its end: the run of settled deliveries
from the oldest unsettled one as a single `basic.ack multiple=True`, those settled behind an
unsettled one each on its own. No ack waits longer than the turn.

Delivery tags belong to a channel, so a window belongs to one channel too: deliveries of a
channel that is gone cannot be settled (RabbitMQ delivers them again).
"""

from __future__ import annotations

import asyncio
from collections import deque

import aiormq.abc
import aiormq.exceptions


class AckWindow:
    """The delivery tags of one consumer channel that no queued frame has covered yet.

    A multiple ack covers a tag only once every lower tag of the channel is settled, so it
    never acks a delivery the worker has not settled. Frames are queued through aiormq's own
    `basic_ack`/`basic_nack` (which refuse a channel that is closing) in the order they are
    computed (one lock, taken first by the oldest write), and a nacked tag counts as settled
    from the moment its frame is queued: a multiple ack never overtakes the single ack or nack
    of a tag it spans, and no tag is settled twice.
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self._open: deque[int] = deque()  # delivered, in order, not yet passed by the front
        self._settled: set[int] = set()  # in `_open`, its own ack or nack frame queued
        self._due: list[int] = []  # acked in this turn, frames not yet computed
        self._waiters: list[asyncio.Future[None]] = []
        self._order = asyncio.Lock()
        self._writes: set[asyncio.Task[None]] = set()

    def delivered(self, tag: int) -> None:
        """Note a delivery of this channel; RabbitMQ numbers them upwards."""
        self._open.append(tag)

    async def ack(self, tag: int) -> None:
        """Ack `tag` together with the others of this turn; return once its frame is queued."""
        if self.channel.is_closed:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        if not self._due:
            loop.call_soon(self._flush)
        self._due.append(tag)
        self._waiters.append(waiter)
        await waiter

    async def nack(self, tag: int, *, requeue: bool) -> None:
        """Nack `tag` now; acks computed later may span it."""
        async with self._order:
            await self.channel.basic_nack(tag, requeue=requeue, wait=False)
            self._settled.add(tag)  # queued: no await between the two, even when cancelled

    def _flush(self) -> None:
        due, self._due = set(self._due), []
        waiters, self._waiters = self._waiters, []
        acks: list[tuple[int, bool]] = []  # (tag, multiple)
        last_due = None
        while self._open and (self._open[0] in due or self._open[0] in self._settled):
            tag = self._open.popleft()
            if tag in due:
                due.discard(tag)
                last_due = tag
            else:
                self._settled.discard(tag)
        if last_due is not None:  # every lower tag is settled: one frame acks the run
            acks.append((last_due, True))
        for tag in sorted(due):  # behind a delivery still running: acked alone
            acks.append((tag, False))
            self._settled.add(tag)
        task = asyncio.ensure_future(self._write(acks, waiters))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(
        self, acks: list[tuple[int, bool]], waiters: list[asyncio.Future[None]]
    ) -> None:
        """Queue the frames in order and tell each waiter how it went (never fails itself)."""
        try:
            async with self._order:
                for tag, multiple in acks:
                    await self.channel.basic_ack(tag, multiple=multiple, wait=False)
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else self._closed_error()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
        else:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _closed_error(self) -> aiormq.exceptions.ChannelInvalidStateError:
        return aiormq.exceptions.ChannelInvalidStateError(f"{self.channel!r} closed")

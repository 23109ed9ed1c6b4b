"""The acks of one consumer channel, written together.

A worker settles many events in the same turn of the event loop (their reply confirms arrive
in one read). Each `basic.ack` on its own is a frame, a socket write and a method for RabbitMQ
to process; here the acks asked for in one turn leave at its end in one write: the run of
settled deliveries from the oldest unsettled one as a single `basic.ack multiple=True`, those
settled behind an unsettled one each on its own. No ack waits longer than the turn.

Delivery tags belong to a channel, so a window belongs to one channel too: deliveries of a
channel that is gone cannot be settled (RabbitMQ delivers them again).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

import aiormq
import aiormq.abc
import aiormq.exceptions
from pamqp import commands


class AckWindow:
    """The delivery tags of one consumer channel that no written frame has covered yet.

    A multiple ack covers a tag only once every lower tag of the channel is settled, so it
    never acks a delivery the worker has not settled. Ack frames are queued in the order they
    are computed (one lock, taken first by the oldest write), and a nacked tag counts as
    settled only once its frame is queued: a multiple ack never overtakes the single ack or
    nack of a tag it spans.
    """

    def __init__(self, channel: aiormq.Channel) -> None:
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
        """Ack `tag` together with the others of this turn; return once it is written."""
        self._check_open()
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        if not self._due:
            loop.call_soon(self._flush)
        self._due.append(tag)
        self._waiters.append(waiter)
        await waiter

    async def nack(self, tag: int, *, requeue: bool) -> None:
        """Nack `tag` now; acks computed later may span it."""
        self._check_open()
        await self._write([commands.Basic.Nack(delivery_tag=tag, requeue=requeue)])
        self._settled.add(tag)

    def _flush(self) -> None:
        due, self._due = set(self._due), []
        waiters, self._waiters = self._waiters, []
        frames: list[commands.Basic.Ack] = []
        last_due = None
        while self._open and (self._open[0] in due or self._open[0] in self._settled):
            tag = self._open.popleft()
            if tag in due:
                due.discard(tag)
                last_due = tag
            else:
                self._settled.discard(tag)
        if last_due is not None:  # every lower tag is settled: one frame acks the run
            frames.append(commands.Basic.Ack(delivery_tag=last_due, multiple=True))
        for tag in sorted(due):  # behind a delivery still running: acked alone
            frames.append(commands.Basic.Ack(delivery_tag=tag))
            self._settled.add(tag)
        task = asyncio.ensure_future(self._write_for(frames, waiters))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_for(
        self, frames: list[commands.Basic.Ack], waiters: list[asyncio.Future[None]]
    ) -> None:
        """Write `frames` and tell each waiter how it went (the task itself never fails)."""
        try:
            await self._write(frames)
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

    async def _write(self, frames: Sequence[commands.Basic.Ack | commands.Basic.Nack]) -> None:
        async with self._order:
            self._check_open()
            # Rejected by aiormq when the channel closes, so no wait outlives the channel.
            drain = self.channel.create_future()
            await self.channel.write_queue.put(
                aiormq.abc.ChannelFrame.marshall(
                    channel_number=self.channel.number, frames=frames, drain_future=drain
                )
            )
        await drain

    def _check_open(self) -> None:
        if self.channel.is_closed:
            raise self._closed_error()

    def _closed_error(self) -> aiormq.exceptions.ChannelInvalidStateError:
        return aiormq.exceptions.ChannelInvalidStateError(f"{self.channel!r} closed")

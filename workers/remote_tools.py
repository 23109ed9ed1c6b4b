"""The agent side of a remote tool: publish a `ToolCall`, await its `ToolResult` on our replies."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import anyio
import msgspec

from agentqueue.broker.base import Broker
from agentqueue.broker.errors import BrokerConnectionError
from agentqueue.broker.replies import ReplyRouter
from agentqueue.broker.topology import Topology
from agentqueue.protocol.codec import encode
from agentqueue.protocol.messages import Envelope, ToolCall, ToolResult
from agentqueue.workers import spans
from agentqueue.workers.toolkit import InvokeRemote, ToolError, ToolOutput

log = logging.getLogger("agentqueue.worker")

REASK_CHECK = 1.0  # seconds between looks at the connection while a tool call is out


class RemoteTools:
    """Sends tool calls of agents running on this worker to the `tools` partitions."""

    def __init__(self, broker: Broker, topology: Topology, router: ReplyRouter) -> None:
        self.broker = broker
        self.topology = topology
        self.router = router

    def for_request(self, request: Envelope, failures: list[str] | None = None) -> InvokeRemote:
        """An `invoke_remote(name, arguments, timeout)` callback bound to one agent request.

        Each failed call's error is appended to `failures` (for the request's final result).

        Tool call ids are `<request id>:<n>`, so a request re-run after a crash sends the same
        ids and the tool worker answers repeated calls from its store instead of running again.
        """
        counter = 0

        async def invoke_remote(
            name: str, arguments: dict[str, Any], timeout: float | None
        ) -> str | ToolOutput:
            nonlocal counter
            counter += 1
            call_id = f"{request.id}:{counter}"
            envelope = Envelope(
                id=call_id,
                session_id=request.session_id,
                key=request.partition_key,
                correlation_id=call_id,
                reply_to=self.router.queue,
                body=ToolCall(name=name, arguments=arguments, call_id=call_id, timeout=timeout),
                created_at=time.time(),
                deadline=request.deadline,
                trace=request.trace,
            )
            inbox = self.router.expect(call_id)
            # The tool worker's own timeout answers first.
            wait = None if timeout is None else timeout + 5.0
            try:
                queue = self.topology.route(envelope)
                with anyio.fail_after(wait):
                    # Publishing from inside AgentScope's execute_tool span: the tool worker's
                    # process span continues it (the span sets the envelope's trace, so it is
                    # encoded inside). Tracing off, request.trace passes through.
                    reconnects = self.broker.reconnects
                    with spans.publishing(self.broker, queue, envelope):
                        await self._publish(queue, encode(envelope))
                    reply = await self._await_result(inbox, queue, envelope, reconnects)
            except TimeoutError:
                error = f"tool {name} timed out after {timeout} s (no tool worker answered)"
                if failures is not None:
                    failures.append(error)
                raise ToolError(error) from None
            finally:
                self.router.forget(call_id)
            result = reply.body
            if not isinstance(result, ToolResult):
                raise ToolError(f"tool {name} got an unexpected {reply.type} reply")
            if not result.ok:
                if failures is not None:
                    failures.append(result.output)
                raise ToolError(result.output)
            if result.images:
                return ToolOutput(result.output, list(result.images))
            return result.output

        return invoke_remote

    async def _await_result(
        self, inbox: asyncio.Queue[Envelope], queue: str, envelope: Envelope, seen: int
    ) -> Envelope:
        # A result that sat in our reply queue when the connection dropped is gone with it (an
        # exclusive queue dies with its connection): after each reconnect since the call went
        # out (`seen` counted before), ask again with the same call id; the tool worker answers
        # a call it has run from its store. Asked as a new attempt, made now: the same bytes
        # again would be refused by a signing tool worker as a replay (or, later, as stale).
        while True:
            with anyio.move_on_after(REASK_CHECK):
                return await inbox.get()
            if self.broker.reconnects != seen:
                seen = self.broker.reconnects
                log.info("reconnected while waiting for tool call %s; asking again", envelope.id)
                envelope = msgspec.structs.replace(
                    envelope, attempt=envelope.attempt + 1, created_at=time.time()
                )
                await self._publish(queue, encode(envelope))

    async def _publish(self, queue: str, body: bytes) -> None:
        # A broker away for a moment (restarting, a cut connection) must not fail the tool
        # call: AgentScope would hand the agent the error as the tool's answer. The same call
        # id goes again until the broker takes it (or the call's timeout ends the wait); a
        # copy that did arrive twice is answered from the tool worker's store.
        pause = 0.2
        while True:
            try:
                await self.broker.publish(queue, body)
                return
            except BrokerConnectionError as exc:
                log.warning("publishing a tool call to %s failed (%s); trying again", queue, exc)
                await anyio.sleep(pause)
                pause = min(pause * 2, 2.0)

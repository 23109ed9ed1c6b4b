"""Run a worker process until SIGTERM or SIGINT, then shut it down gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import anyio

from agentqueue.broker.base import Broker
from agentqueue.broker.errors import BrokerConnectionError
from agentqueue.broker.urls import redact_url
from agentqueue.settings import Settings
from agentqueue.workers.admission import check_signing
from agentqueue.workers.app import App
from agentqueue.workers.worker import Role, Worker

log = logging.getLogger("agentqueue.worker")

FIRST_RETRY, LAST_RETRY = 0.5, 30.0  # seconds between tries to reach a broker not up yet
# Loggers that report a lost broker connection with a traceback, though reconnecting is routine.
_RECONNECT_LOGGERS = ("aiormq.connection", "aio_pika.robust_connection", "aio_pika.tools")


class _OneLineReconnects(logging.Filter):
    """Drops the traceback of an expected connection loss: the reason stays, on one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]!r}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def _quiet_reconnects() -> None:
    for name in _RECONNECT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLineReconnects) for f in logger.filters):
            logger.addFilter(_OneLineReconnects())


async def connect_patiently(broker: Broker) -> None:
    """Connect, waiting with backoff while the broker is not up yet (started after us)."""
    pause = FIRST_RETRY
    while True:
        try:
            await broker.connect()
            return
        except BrokerConnectionError as exc:
            log.warning("%s; trying again in %.1f s", exc, pause)
        await anyio.sleep(pause)
        pause = min(pause * 2, LAST_RETRY)


async def serve_worker(
    app: App,
    settings: Settings,
    *,
    role: Role = "all",
    partitions: list[int] | None = None,
    tool_partitions: list[int] | None = None,
    tracing: bool | None = None,
) -> None:
    """Connect, serve until a signal, drain, disconnect."""
    store = settings.open_store()
    log.info("session store %s", redact_url(settings.store))
    _quiet_reconnects()
    try:
        broker = settings.open_broker()
        await connect_patiently(broker)
        async with broker:
            check_signing(broker.signing)  # says so, once, when envelopes run unsigned
            worker = Worker(
                app,
                broker,
                store,
                settings,
                role=role,
                partitions=partitions,
                tool_partitions=tool_partitions,
                tracing=tracing,
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(_stop_on_signal, worker)
                tg.start_soon(_describe_on_signal)
                await worker.run()
                tg.cancel_scope.cancel()
            log.info(
                "worker %s on %s stopped after %d events",
                worker.worker_id,
                redact_url(settings.broker),
                worker.handled,
            )
    finally:
        await store.close()


def run_worker(
    app: App,
    settings: Settings | None = None,
    *,
    role: Role = "all",
    partitions: list[int] | None = None,
    tool_partitions: list[int] | None = None,
) -> None:
    """Serve `app` from this process until SIGTERM or Ctrl-C, as `agentqueue worker` does.

    The in-process counterpart of the CLI (FastStream's `app.run()`, Celery's `worker_main`):
    settings come from `settings`, else from `AGENTQUEUE_*` and the defaults.
    """
    settings = Settings.load() if settings is None else settings
    if not logging.getLogger().handlers:  # the script set up no logging: log as the CLI does
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("agentqueue").setLevel(logging.INFO)
    anyio.run(
        lambda: serve_worker(
            app, settings, role=role, partitions=partitions, tool_partitions=tool_partitions
        )
    )


async def _stop_on_signal(worker: Worker) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info(
                "received %s: finishing in-flight events, then exiting", signal.Signals(signum).name
            )
            worker.stop()


async def _describe_on_signal() -> None:
    """SIGUSR1 logs what every task of the worker is waiting on (for a worker that seems stuck)."""
    with anyio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            log.warning("tasks on SIGUSR1:\n%s", describe_tasks())


def describe_tasks() -> str:
    """One line per asyncio task: its name and the chain of awaits it is suspended in."""
    lines = []
    for task in sorted(asyncio.all_tasks(), key=lambda t: t.get_name()):
        awaits: list[str] = []
        coro: object | None = task.get_coro()
        while coro is not None and len(awaits) < 12:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is None:
                break
            awaits.append(
                f"{frame.f_code.co_name} {Path(frame.f_code.co_filename).name}:{frame.f_lineno}"
            )
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        lines.append(f"  {task.get_name()}: {' > '.join(awaits) or repr(coro)}")
    return "\n".join(lines)

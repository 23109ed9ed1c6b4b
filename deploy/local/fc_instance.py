"""One emulated Function Compute instance: `python -m agentqueue.deploy.local.fc_instance`.

It speaks JSON lines with the emulator (`local_fc`) over stdin/stdout:

    <- {"ready": true, "init_ms": 812.4}                      once the initializer has run
    -> {"id": 7, "payload": "<the trigger payload text>"}       one invocation
    <- {"id": 7, "ok": true, "result": "...", "ms": 35.2}       or "ok": false with "error"

Anything the function prints goes to stderr, so stdout carries only these lines. The process
handles one invocation at a time (FC's default instance concurrency of 1) and exits when stdin
closes, after running the function's shutdown hook. `AGENTQUEUE_FC_HANDLER` and
`AGENTQUEUE_FC_INITIALIZER` name the hooks (default: `agentqueue.workers.fc.handler` and
`.initializer`; an empty initializer skips it).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

DEFAULT_HANDLER = "agentqueue.workers.fc.handler"
DEFAULT_INITIALIZER = "agentqueue.workers.fc.initializer"


class Context:
    """The part of FC's `context` argument a handler may read."""

    def __init__(self, request_id: str, function_name: str) -> None:
        self.request_id = request_id
        self.function = type("Function", (), {"name": function_name, "handler": DEFAULT_HANDLER})()
        self.region = "local"
        self.account_id = "local"


def _hook(spec: str) -> Callable[..., Any]:
    module, _, name = spec.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _send(out: TextIO, message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def main() -> int:
    """Serve invocations from stdin until it closes."""
    started = time.perf_counter()
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    sys.stdout = sys.stderr  # the function's prints must not corrupt the protocol
    os.dup2(sys.stderr.fileno(), 1)
    logging.basicConfig(
        level=os.environ.get("AGENTQUEUE_FC_LOG_LEVEL", "WARNING"),
        format=f"%(asctime)s fc-instance[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    function_name = os.environ.get("AGENTQUEUE_FC_FUNCTION", "agentqueue")
    handler = _hook(os.environ.get("AGENTQUEUE_FC_HANDLER", DEFAULT_HANDLER))
    initializer_spec = os.environ.get("AGENTQUEUE_FC_INITIALIZER", DEFAULT_INITIALIZER)
    try:
        if initializer_spec:
            _hook(initializer_spec)(Context("init", function_name))
    except Exception as exc:
        _send(
            protocol, {"ready": False, "error": f"initializer failed: {type(exc).__name__}: {exc}"}
        )
        return 1
    _send(protocol, {"ready": True, "init_ms": (time.perf_counter() - started) * 1000})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        t0 = time.perf_counter()
        try:
            result = handler(
                request["payload"].encode("utf-8"), Context(str(request["id"]), function_name)
            )
        except Exception as exc:
            reply = {"id": request["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        else:
            reply = {
                "id": request["id"],
                "ok": True,
                "result": None if result is None else str(result),
            }
        reply["ms"] = (time.perf_counter() - t0) * 1000
        _send(protocol, reply)
    shutdown = os.environ.get("AGENTQUEUE_FC_SHUTDOWN", "agentqueue.workers.fc.shutdown")
    if shutdown:
        _hook(shutdown)()
    return 0


if __name__ == "__main__":
    sys.exit(main())

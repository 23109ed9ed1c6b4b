"""The client side of one job, in a process of its own:

    python -m benchmarks.client CONTENDER JOB '{"calls": 500}'

reads the `BENCH_*` environment (see `BenchEnv`) and prints the job's result as one JSON line.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import anyio

from benchmarks.contenders.common import BenchEnv

CONTENDERS = {
    "raw": "benchmarks.contenders.raw_aio_pika",
    "agentqueue": "benchmarks.contenders.agentqueue_tools",
    "celery": "benchmarks.contenders.celery_rpc",
    "taskiq": "benchmarks.contenders.taskiq_rpc",
    "faststream": "benchmarks.contenders.faststream_rpc",
    "agent": "benchmarks.agent_batch",
}


def contender(key: str) -> Any:
    """The module of a contender, by its short key."""
    try:
        return importlib.import_module(CONTENDERS[key])
    except KeyError:
        raise SystemExit(
            f"unknown contender {key!r}; choose one of {', '.join(CONTENDERS)}"
        ) from None


def main(argv: list[str]) -> int:
    """Run one job and print its result."""
    key, job, params = argv[0], argv[1], json.loads(argv[2] if len(argv) > 2 else "{}")
    module = contender(key)
    result = anyio.run(module.run_job, BenchEnv.from_environ(), job, params)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env bash
# Set up everything the tests need (uv, dependencies, rabbitmq-server, redis-server, bubblewrap,
# chromium, xvfb, xdotool, a window manager), lint, type-check, and run the whole suite. The
# suite starts its own RabbitMQ and Redis on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
uv run --frozen ruff check .
# Type-check the package and tests/typing (see [tool.mypy] in pyproject.toml); fails on any error.
uv run --frozen python scripts/typecheck.py
uv run --frozen pytest "$@"

#!/usr/bin/env bash
# Set up everything the tests need (uv, dependencies, rabbitmq-server, redis-server, bubblewrap,
# chromium, xvfb, xdotool, a window manager), lint, and run the whole suite. The suite starts
# its own RabbitMQ and Redis on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
uv run --frozen ruff check .
uv run --frozen pytest "$@"

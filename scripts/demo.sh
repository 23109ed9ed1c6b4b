#!/usr/bin/env bash
# Set up (uv, locked dependencies) and run the demo on the embedded broker. Extra arguments go
# to `agentqueue demo`, e.g. `scripts/demo.sh --broker amqp://guest:guest@127.0.0.1:5672/`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
    echo "setup: installing uv with pip"
    python3 -m pip install --quiet uv
fi
uv sync --frozen --quiet
exec uv run --frozen agentqueue demo "$@"

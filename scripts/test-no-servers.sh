#!/usr/bin/env bash
# Run the tests not marked `broker` on a machine where RabbitMQ and Redis are not installed:
# inside a bubblewrap sandbox that hides /usr/lib/rabbitmq and redis-server. CI=true turns a
# missing server into a failure, so a test that needs one without the marker fails here. /dev and
# /proc are the real ones, so the sandbox tests can start bubblewrap of their own inside.
set -euo pipefail
cd "$(dirname "$0")/.."
farm=$(mktemp -d)
trap 'rm -rf "$farm"' EXIT
# /usr/bin seen through symlinks into the real directory (bound at /usr/bin/.host), minus redis.
mkdir "$farm/.host"
for program in /usr/bin/*; do
    case ${program##*/} in redis-server | redis-check-rdb | redis-check-aof) continue ;; esac
    ln -s "/usr/bin/.host/${program##*/}" "$farm/"
done
bwrap --bind / / --dev-bind /dev /dev --bind /proc /proc \
    --ro-bind "$farm" /usr/bin --ro-bind /usr/bin /usr/bin/.host \
    --tmpfs /usr/lib/rabbitmq --tmpfs /usr/lib/erlang \
    --setenv CI true \
    uv run --frozen pytest -m "not broker" -q "$@"

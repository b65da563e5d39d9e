#!/usr/bin/env bash
# The whole stack on this machine: Redis, one worker, the API on http://127.0.0.1:8000. Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
REDIS_PORT=${REDIS_PORT:-6379}
API_PORT=${API_PORT:-8000}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:${REDIS_PORT}/0}

pids=()
cleanup() {
    trap - EXIT INT TERM
    # API and worker first, Redis last, so they shut down cleanly
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
}
trap cleanup EXIT INT TERM

if redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
    echo "using the Redis already at $REDIS_URL"
else
    # jobs live here: an append-only file under .venv, fsynced every second, so a restart loses at most a second
    mkdir -p .venv/redis-data
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync everysec \
        --maxmemory "${REDIS_MAXMEMORY:-1gb}" --maxmemory-policy noeviction --dir .venv/redis-data &
    pids+=($!)
fi
"$PY" -m worker &
pids+=($!)
# API_WORKERS processes (default 1) under uvicorn, no access log (api/__main__.py)
"$PY" -m api --host 127.0.0.1 --port "$API_PORT" &
pids+=($!)
echo "API on http://127.0.0.1:${API_PORT} (docs at /docs); Ctrl-C stops everything"
wait -n  # if any one of them exits, stop the others

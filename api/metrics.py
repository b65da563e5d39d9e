"""Prometheus metrics of the API process, ``GET /metrics``, and the middleware that tracks every request."""

from __future__ import annotations

import collections
import logging
import os
import random
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.model_cards import Variants, model_cards
from shared import keys
from shared.errors import ClientGone
from shared.settings import Settings
from shared.workers import WorkerInfo, live_workers

REQUESTS = Counter("embeddings_api_requests_total", "HTTP requests", ["route", "status"])
REQUEST_SECONDS = Histogram(
    "embeddings_api_request_seconds",
    "HTTP request latency",
    ["route", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
ERRORS = Counter("embeddings_api_errors_total", "Error responses by kind", ["kind"])
QUEUE_DEPTH = Gauge("embeddings_queue_jobs", "Jobs in the sync queue, waiting or running")
QUEUED_TEXTS = Gauge("embeddings_queued_texts", "Texts queued or being encoded, deployment-wide")
LIVE_WORKERS = Gauge("embeddings_live_workers", "Workers with a recent heartbeat")
LIVE_WORKER_JOBS = Gauge(
    "embeddings_live_worker_jobs", "Jobs the live workers handled since they started, by outcome", ["outcome"]
)
STORE_RESERVED = Gauge("embeddings_store_reserved_bytes", "Bytes of Redis reserved by jobs, batches and uploads")
STORE_BUDGET = Gauge("embeddings_store_budget_bytes", "Bytes of Redis they may reserve (0: no bound)")
REDIS_USED = Gauge("embeddings_redis_used_memory_bytes", "Redis' used_memory")
REDIS_MAXMEMORY = Gauge("embeddings_redis_maxmemory_bytes", "Redis' maxmemory (0: no cap)")
MODEL_VARIANTS = Gauge(
    "embeddings_model_variants", "Distinct (backend, dtype) pairs live workers serve a model with", ["model"]
)

#: the status a request is counted under when its client left before the answer (nginx's convention)
CLIENT_GONE_STATUS = 499

log = logging.getLogger(__name__)

router = APIRouter()

#: the (model, variants) combinations already warned of
_warned: set[tuple[str, frozenset[tuple[str, str]]]] = set()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    redis = request.app.state.redis
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zcard(keys.SYNC_QUEUE)
            pipe.get(keys.QUEUED_TEXTS)
            depth, texts = await pipe.execute()
        QUEUE_DEPTH.set(depth)
        QUEUED_TEXTS.set(int(texts or 0))
        workers = await live_workers(redis, settings.worker_ttl_s)
        LIVE_WORKERS.set(len(workers))
        for outcome, count in _summed_counters(workers).items():
            LIVE_WORKER_JOBS.labels(outcome).set(count)
        record_model_variants(model_cards([], workers).variants)
        usage, memory = await request.app.state.admission.usage()
        STORE_RESERVED.set(usage.reserved)
        STORE_BUDGET.set(usage.budget)
        REDIS_USED.set(memory.used)
        REDIS_MAXMEMORY.set(memory.maxmemory)
    except (RedisError, OSError):
        pass  # the process's own metrics are still worth serving
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def record_model_variants(variants: Variants) -> None:
    """Set ``embeddings_model_variants`` of each model live workers serve, and warn, once per combination, of a
    model they serve on different runtimes or precisions (its vectors differ from one request to the next)."""
    for name, seen in variants.items():
        MODEL_VARIANTS.labels(name).set(len(seen))
        if len(seen) > 1:
            _warn_once(name, seen)


def _warn_once(name: str, seen: collections.Counter[tuple[str, str]]) -> None:
    key = (name, frozenset(seen))
    if key in _warned:
        return
    _warned.add(key)
    described = ", ".join(f"{backend} {dtype} ({count} workers)" for (backend, dtype), count in sorted(seen.items()))
    log.warning("model %r is served with different runtimes or precisions: %s; its vectors differ", name, described)


def _summed_counters(workers: list[WorkerInfo]) -> dict[str, int]:
    """Every worker's heartbeat counts, summed: the fleet's view without scraping each worker."""
    totals: collections.Counter[str] = collections.Counter()
    for worker in workers:
        totals.update(worker.counters)
    return dict(totals)


#: where request ids come from: 128 random bits a request, from a generator seeded by the OS (and again in a
#: forked child), so an id costs no system call (``secrets`` reads the OS's randomness every time); ids only tell
#: requests apart, they guard nothing
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def request_id() -> str:
    """A new request's id: 32 hex digits."""
    return f"{_ids.getrandbits(128):032x}"


class RequestTracking:
    """ASGI middleware, the outermost: every request gets an id (``scope["state"]["request_id"]``, for log lines,
    and ``x-request-id`` on its response, errors included), and is counted and timed by route template and status.
    A client that left before its answer (``ClientGone``, or Starlette's ``ClientDisconnect`` while a body was read)
    ends here: one INFO line, counted as 499."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        #: each (route, status)'s counter and histogram, looked up once (``labels`` locks and hashes every time)
        self._series: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id_ = request_id()
        scope.setdefault("state", {})["request_id"] = request_id_
        id_header = (b"x-request-id", request_id_.encode())
        status = 500

        async def send_tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            await self._app(scope, receive, send_tracked)
        except (ClientGone, ClientDisconnect):
            status = CLIENT_GONE_STATUS
            log.info("request %s: the client left before it was answered", request_id_)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            series = self._series.get((route, status))
            if series is None:
                series = self._series[route, status] = (
                    REQUESTS.labels(route, status),
                    REQUEST_SECONDS.labels(route, status),
                )
            series[0].inc()
            series[1].observe(time.perf_counter() - started)

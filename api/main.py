"""The API application factory: ``uvicorn api.main:create_app --factory``."""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Callable

from arq.connections import ArqRedis
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import docs, fast_route, health, metrics, openapi
from api.admission import Admission
from api.auth import ApiKeyAuth, KeyRing
from api.batches import routes as batches
from api.batches.store import BatchStore
from api.body_limit import BodySizeLimit
from api.dispatch import Dispatcher
from api.embeddings import cohere
from api.embeddings import routes as embeddings
from api.errors import install_error_handlers
from api.files import routes as files
from api.files.store import FileStore
from api.jobs import routes as jobs
from api.jobs.store import JobStore
from api.metrics import RequestTracking
from api.pooling import routes as pooling
from api.replies import BLOCK_S, ReplyReader
from api.rerank import routes as rerank
from api.sparse import routes as sparse
from api.tokenize import routes as tokenize
from shared import heap, keys, tracing
from shared.chunks import ChunkStore
from shared.epoch import Epochs
from shared.job_queue import JobQueue
from shared.redis_client import connect
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, redis_factory: Callable[..., ArqRedis] = connect) -> FastAPI:
    """``redis_factory(settings, blocking_timeout_s=...)`` builds the Redis clients (tests pass fakeredis)."""
    settings = settings or get_settings()
    # under uvicorn the root logger has no handler, so the app's own INFO lines (request ids) would be lost
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    key_ring = KeyRing.from_settings(settings)
    if not key_ring.enabled:
        log.warning("no API keys are configured (API_KEYS, API_KEY_HASHES_FILE): the API is open to anyone")
    otel = settings.otel_instrumentation
    traced = tracing.configure("embeddings-api")
    app = fast_route.ServiceApp(
        title="Embeddings server",
        version="0.1.0",
        # api.docs serves /docs from a local copy of Swagger UI instead of FastAPI's CDN page; no ReDoc
        docs_url=None,
        redoc_url=None,
        lifespan=functools.partial(_connected, settings=settings, redis_factory=redis_factory),
        # the server span a request's trace starts from (shared.tracing) is FastAPI's own
        telemetry={"tracing": traced or otel, "metrics": otel, "logs": otel, "tracer_provider": tracing.provider()},
    )
    app.state.settings = settings
    install_error_handlers(app)
    _install_routes(app)
    openapi.install(app, settings, keys_required=key_ring.enabled)
    _install_middleware(app, settings, key_ring)
    if not (traced or otel):  # FastAPI's telemetry makes the server span a request's trace starts from
        app.short_way()
    return app


@contextlib.asynccontextmanager
async def _connected(
    app: FastAPI, *, settings: Settings, redis_factory: Callable[..., ArqRedis]
) -> AsyncIterator[None]:
    """The app's Redis clients, stores and reply reader, for as long as it serves."""
    redis = redis_factory(settings)
    reader_redis = redis_factory(settings, blocking_timeout_s=BLOCK_S)
    replies = ReplyReader(reader_redis, keys.reply_list(uuid.uuid4().hex))
    replies.start()
    app.state.redis = redis
    app.state.admission = admission = Admission(redis, settings)
    app.state.chunks = chunks = ChunkStore(redis)
    app.state.jobs = JobStore(redis, chunks)
    app.state.files = FileStore(redis, settings.job_result_ttl_s, admission)
    app.state.batches = BatchStore(redis, chunks)
    app.state.chunk_queue = JobQueue.chunks(redis)
    app.state.epochs = Epochs(redis)
    app.state.dispatcher = Dispatcher(
        redis,
        replies,
        admission.guard,
        worker_ttl_s=settings.worker_ttl_s,
        max_queued_texts=settings.max_queued_texts,
        max_queued_texts_per_key=settings.queued_texts_per_key,
        request_timeout_s=settings.request_timeout_s,
    )
    heap.settle()
    try:
        yield
    finally:
        await replies.stop()
        await reader_redis.aclose()
        await redis.aclose()
        tracing.flush()


def _install_routes(app: FastAPI) -> None:
    # first: FastRoutes must be the innermost middleware
    fast_route.install(
        app, embeddings.ROUTE, cohere.ROUTE, *rerank.ROUTES, *tokenize.ROUTES, *pooling.ROUTES, sparse.ROUTE
    )
    app.include_router(jobs.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    docs.install(app)


def _install_middleware(app: FastAPI, settings: Settings, key_ring: KeyRing) -> None:
    """Added innermost first: the body limit, then keys, CORS, and request tracking outermost."""
    # a batch input file is larger than any request body; the multipart framing around it is small
    upload_limit = settings.max_batch_file_bytes + 64 * 1024
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, larger={"/v1/files": upload_limit})
    app.add_middleware(ApiKeyAuth, ring=key_ring, protect_metrics=settings.protect_metrics)
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        )
    app.add_middleware(RequestTracking)

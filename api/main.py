"""The API application factory: ``uvicorn api.main:create_app --factory``."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable

from arq.connections import ArqRedis
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import fast_route, health, metrics
from api.admission import Admission
from api.auth import ApiKeyAuth, KeyRing
from api.batches import routes as batches
from api.batches.store import BatchStore
from api.body_limit import BodySizeLimit
from api.dispatch import Dispatcher
from api.embeddings import routes as embeddings
from api.errors import install_error_handlers
from api.files import routes as files
from api.files.store import FileStore
from api.jobs import routes as jobs
from api.metrics import RequestTracking
from api.replies import BLOCK_S, ReplyReader
from shared import keys
from shared.chunks import JobStore
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

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not key_ring.enabled:
            log.warning("no API keys are configured (API_KEYS, API_KEY_HASHES_FILE): the API is open to anyone")
        redis = redis_factory(settings)
        listener_redis = redis_factory(settings, blocking_timeout_s=BLOCK_S)
        listener = ReplyReader(listener_redis, keys.reply_list(uuid.uuid4().hex))
        listener.start()
        app.state.redis = redis
        app.state.admission = admission = Admission(redis, settings)
        app.state.jobs = JobStore(redis)
        app.state.files = FileStore(redis, settings.job_result_ttl_s, admission)
        app.state.batches = BatchStore(redis)
        app.state.chunk_queue = JobQueue.chunks(redis)
        app.state.epochs = Epochs(redis)
        app.state.dispatcher = Dispatcher(
            redis,
            listener,
            admission.guard,
            worker_ttl_s=settings.worker_ttl_s,
            max_queued_texts=settings.max_queued_texts,
        )
        try:
            yield
        finally:
            await listener.stop()
            await listener_redis.aclose()
            await redis.aclose()

    otel = settings.otel_instrumentation
    app = FastAPI(
        title="Embeddings server",
        version="0.1.0",
        lifespan=lifespan,
        telemetry={"tracing": otel, "metrics": otel, "logs": otel},
    )
    app.state.settings = settings
    install_error_handlers(app)
    fast_route.install(app, embeddings.ROUTE)
    app.include_router(jobs.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
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
    return app

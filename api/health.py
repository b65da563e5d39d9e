"""Liveness, readiness and the model list."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from api.errors import READ_ERRORS, READINESS_ERRORS, error_response, error_responses
from api.http import json_response
from api.model_cards import model_cards
from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings
from shared.workers import live_workers

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    """The process is alive."""
    return json_response({"status": "ok"})


@router.get("/readyz", responses=error_responses(*READINESS_ERRORS))
async def readyz(request: Request) -> Response:
    """Redis answers, keeps what it is given (no eviction policy) and at least one worker is alive; else 503."""
    settings: Settings = request.app.state.settings
    try:
        await request.app.state.admission.check_store()
        workers = await live_workers(request.app.state.redis, settings.worker_ttl_s)
    except (RedisError, OSError):
        return error_response(ErrorKind.SERVICE_UNAVAILABLE, "Redis is unreachable")
    except ServiceError as exc:
        return error_response(exc.kind, exc.message)
    if not workers:
        return error_response(ErrorKind.SERVICE_UNAVAILABLE, "no embedding worker is running")
    return json_response({"status": "ready", "workers": len(workers)})


@router.get("/v1/models", responses=error_responses(*READ_ERRORS))
async def list_models(request: Request) -> Response:
    """The configured models, and any other model a live worker has loaded; for a loaded one also its dimensions,
    maximum tokens, prompt names, default prompt, whether its vectors are normalized, its runtime and precision."""
    settings: Settings = request.app.state.settings
    try:
        workers = await live_workers(request.app.state.redis, settings.worker_ttl_s)
    except (RedisError, OSError):
        workers = []  # the configured list is still true
    configured = [*settings.embed_models, *settings.model_paths]
    if settings.default_rerank_model:
        configured.append(settings.default_rerank_model)
    cards = model_cards(configured, workers).cards
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "embeddings-server", **card}
        for name, card in cards.items()
    ]
    return json_response({"object": "list", "data": data})

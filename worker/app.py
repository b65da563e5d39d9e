"""The arq side of a worker: ``WorkerSettings``, start-up and shutdown, and a worker that wakes on pub/sub.

``python -m worker`` runs ``EmbeddingWorker``, which waits for the API's wake-up message instead of arq's
fixed poll delay, so a job starts within a Redis round trip of being enqueued. ``arq worker.app.WorkerSettings``
also works, polling every ``poll_delay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from typing import Any, ClassVar, cast

from arq import func
from arq.worker import Worker, get_kwargs
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.queue import EMBED_FUNCTION, connect, deserialize_arq_job, serialize_arq_job
from shared.settings import Settings, get_settings
from shared.workers import WorkerInfo, now_ms, record_heartbeat, remove_worker
from worker.encoder import pick_device
from worker.model_source import load_encoder
from worker.registry import ModelRegistry
from worker.service import EmbeddingService

log = logging.getLogger(__name__)

#: longest a worker sleeps without looking at the queue, in case a wake-up message was missed
IDLE_POLL_S = 1.0


async def embed(ctx: dict[str, Any], message: bytes) -> None:
    service: EmbeddingService = ctx["service"]
    await service.handle(message)


async def startup(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    worker_id = uuid.uuid4().hex[:12]
    registry = ModelRegistry(
        functools.partial(load_encoder, settings=settings),
        max_loaded=settings.max_loaded_models,
        failure_ttl_s=settings.model_failure_ttl_s,
        max_batch_size=settings.max_batch_size,
        max_batch_tokens=settings.max_batch_tokens,
    )
    service = EmbeddingService(registry, ctx["redis"], worker_id)
    ctx["service"] = service
    for name in settings.embed_models:
        with contextlib.suppress(Exception):  # a model that fails to load is reported and served as an error
            model = await registry.get(name)
            await model.batcher.submit([model.encoder.prepare([], truncate=True, param="input")])  # warm-up
    info = functools.partial(WorkerInfo, worker_id, pick_device(settings.device), started_ms=now_ms())
    ctx["background"] = [
        asyncio.create_task(_heartbeat(ctx["redis"], settings, lambda: info(models=registry.loaded_names()))),
    ]
    wake = ctx.get("wake")
    if isinstance(wake, asyncio.Event):
        ctx["background"].append(asyncio.create_task(_listen_for_wake_ups(ctx["redis"], wake)))
    log.info("worker %s ready; models: %s", worker_id, ", ".join(registry.loaded_names()) or "none")


async def shutdown(ctx: dict[str, Any]) -> None:
    for task in ctx.get("background", []):
        task.cancel()
    service: EmbeddingService | None = ctx.get("service")
    if service is None:
        return
    size, requests = service.largest_batch
    log.info("largest batch: %d sequences from %d requests", size, requests)
    await service.registry.close()
    with contextlib.suppress(RedisError, OSError):
        await remove_worker(ctx["redis"], service.worker_id)


async def _heartbeat(redis: Redis, settings: Settings, describe: Any) -> None:
    while True:
        try:
            await record_heartbeat(redis, describe(), settings.worker_ttl_s)
        except (RedisError, OSError) as exc:
            log.warning("heartbeat failed: %r", exc)
        await asyncio.sleep(settings.worker_heartbeat_s)


async def _listen_for_wake_ups(redis: Redis, wake: asyncio.Event) -> None:
    while True:
        try:
            async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(keys.WAKE_CHANNEL)
                wake.set()  # anything enqueued while we were not listening
                while True:
                    message = await pubsub.get_message(timeout=IDLE_POLL_S)
                    if message is not None:
                        wake.set()
        except (RedisError, OSError) as exc:
            log.warning("wake-up subscription lost (%r); reconnecting", exc)
            await asyncio.sleep(0.5)


class WorkerSettings:
    """arq settings; the values that depend on the deployment come from ``shared.settings`` at start-up."""

    functions: ClassVar = [func(embed, name=EMBED_FUNCTION, keep_result=0)]
    queue_name = keys.SYNC_QUEUE
    job_serializer = staticmethod(serialize_arq_job)
    job_deserializer = staticmethod(deserialize_arq_job)
    on_startup = startup
    on_shutdown = shutdown
    keep_result = 0
    poll_delay = 0.05


class EmbeddingWorker(Worker):
    """An arq worker that sleeps until woken (a new job, or a finished one freeing capacity), not a fixed delay."""

    def __init__(self, *, wake: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "poll_delay": 0})
        self._wake = wake

    async def _poll_iteration(self) -> None:
        self._wake.clear()  # before reading the queue: a job enqueued meanwhile sets it again
        await super()._poll_iteration()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._wake.set()


def build_worker(settings: Settings) -> EmbeddingWorker:
    wake = asyncio.Event()
    return EmbeddingWorker(
        **get_kwargs(cast(Any, WorkerSettings)),
        wake=wake,
        redis_pool=connect(settings),
        max_jobs=settings.worker_max_jobs,
        job_timeout=settings.request_timeout_s + 60,
        ctx={"wake": wake},
    )

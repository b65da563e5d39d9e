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
from collections.abc import Coroutine
from typing import Any, ClassVar, cast

from arq import func
from arq.worker import Worker, get_kwargs
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.arq_batch import ArqBatch, ClaimedJob
from shared.queue import EMBED_FUNCTION, connect, deserialize_arq_job, serialize_arq_job
from shared.settings import Settings, get_settings
from shared.workers import WorkerInfo, now_ms, record_heartbeat, remove_worker
from worker import metrics
from worker.encoder import pick_device
from worker.model_source import load_encoder
from worker.registry import ModelRegistry
from worker.service import EmbeddingService
from worker.wake_ups import IDLE_POLL_S, WakeUps

log = logging.getLogger(__name__)

#: chunks are claimed by count (``worker_max_chunks``), not by texts
_NO_TEXT_BUDGET = 1 << 30


async def embed(ctx: dict[str, Any], message: bytes) -> None:
    """The job function, for a stock arq worker; ``EmbeddingWorker`` calls the service directly."""
    service: EmbeddingService = ctx["service"]
    await service.handle(ctx["job_id"], message, attempt=ctx.get("job_try", 1))


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
    service = EmbeddingService(
        registry,
        ctx["redis"],
        worker_id,
        max_attempts=settings.max_job_attempts,
        max_tokens=settings.max_tokens_per_request,
    )
    if settings.worker_metrics_port:
        metrics.serve(settings.worker_metrics_port, settings.worker_metrics_address)
    ctx["service"] = service
    for name in settings.embed_models:
        with contextlib.suppress(Exception):  # a model that fails to load is reported and served as an error
            model = await registry.get(name)
            await model.batcher.submit([model.encoder.prepare([], truncate=True, param="input")])  # warm-up
    info = functools.partial(WorkerInfo, worker_id, pick_device(settings.device), started_ms=now_ms())
    ctx["background"] = [
        asyncio.create_task(
            _heartbeat(
                ctx["redis"], settings, lambda: info(models=registry.loaded_names(), counters=dict(service.counters))
            )
        ),
    ]
    wake_ups = ctx.get("wake_ups")
    if isinstance(wake_ups, WakeUps):
        ctx["background"].append(asyncio.create_task(wake_ups.listen(ctx["redis"])))
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
    """arq's worker (settings, start-up, signals, graceful shutdown), with a loop made for many short jobs.

    - It sleeps until woken (a job was enqueued, or capacity freed up), not for a fixed poll delay.
    - It claims the jobs it can take with one script (``shared.arq_batch``), not a transaction each, and only
      as many texts as it will encode soon (``worker_prefetch_texts``): the rest stay for other workers.
    - It claims jobs for a short lease and renews it while it runs them: when a worker dies, its jobs are run
      again elsewhere after ``job_lease_s``, not after arq's whole job timeout.
    - It looks at the chunk queue only when there may be something new there (``worker.wake_ups``).
    - It survives Redis going away and coming back (empty), without a restart.
    """

    def __init__(
        self, *, wake_ups: WakeUps, lease_s: float, prefetch_texts: int, max_chunks: int, **kwargs: Any
    ) -> None:
        super().__init__(**{**kwargs, "poll_delay": 0})
        self._wake_ups = wake_ups
        self._lease_s = lease_s
        self._prefetch_texts = prefetch_texts
        self._held_texts = 0
        self.in_progress_timeout_s = lease_s
        self._lease_task: asyncio.Task[None] | None = None
        self._sync: ArqBatch | None = None
        self._chunks: ArqBatch | None = None
        self._max_chunks = max_chunks
        self._held_chunks = 0
        #: the held jobs that are chunks (their leases are renewed in the chunk queue)
        self._chunk_ids: set[str] = set()

    async def _poll_iteration(self) -> None:
        if self._sync is None or self._chunks is None:
            self._sync = ArqBatch.sync(self.pool)
            self._chunks = ArqBatch.chunks(self.pool)
            self._lease_task = asyncio.create_task(self._renew_leases())
        self._wake_ups.event.clear()  # before reading the queue: a job enqueued meanwhile sets it again
        try:
            if self.allow_pick_jobs:
                await self._claim_sync_jobs(self._sync)
                if self._wake_ups.look_at_chunks():
                    await self._claim_chunks(self._chunks)
            await self.heart_beat()
        except (RedisError, OSError) as exc:
            log.warning("reading the queue failed (%r); retrying", exc)
            await asyncio.sleep(0.5)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake_ups.event.wait(), IDLE_POLL_S)

    async def _claim_sync_jobs(self, arq: ArqBatch) -> None:
        room = self.max_jobs - len(self.tasks)
        if room <= 0 or self._held_texts >= self._prefetch_texts:
            return
        service: EmbeddingService = self.ctx["service"]
        claimed = await arq.claim(room, self._prefetch_texts - self._held_texts, int(self._lease_s * 1000), now_ms())
        for job in claimed:
            self._held_texts += job.texts
            self._start(job, service.handle(job.job_id, job.message, job.attempt), chunk=False)
        metrics.HELD_TEXTS.set(self._held_texts)

    async def _claim_chunks(self, arq: ArqBatch) -> None:
        room = self._max_chunks - self._held_chunks
        if room <= 0:
            return
        service: EmbeddingService = self.ctx["service"]
        for job in await arq.claim(room, _NO_TEXT_BUDGET, int(self._lease_s * 1000), now_ms()):
            self._held_chunks += 1
            self._start(job, service.handle_chunk(job.job_id, job.message, job.attempt), chunk=True)

    def _start(self, job: ClaimedJob, work: Coroutine[Any, Any, None], *, chunk: bool) -> None:
        if chunk:
            self._chunk_ids.add(job.job_id)
        task = asyncio.create_task(work)
        self.tasks[job.job_id] = task
        task.add_done_callback(functools.partial(self._job_done, job, chunk))

    def _job_done(self, job: ClaimedJob, chunk: bool, task: asyncio.Task[None]) -> None:
        was_full = (
            len(self.tasks) >= self.max_jobs
            or self._held_texts >= self._prefetch_texts
            or self._held_chunks >= self._max_chunks
        )
        self.tasks.pop(job.job_id, None)
        if chunk:
            self._held_chunks -= 1
            self._chunk_ids.discard(job.job_id)
            self._wake_ups.chunks_may_wait()
        else:
            self._held_texts -= job.texts
            metrics.HELD_TEXTS.set(self._held_texts)
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s failed outside the service: %r", job.job_id, task.exception())
        if was_full:
            self._wake_ups.event.set()

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 3)
            if not self.tasks or self._sync is None or self._chunks is None:
                continue
            lease_ms, now = int(self._lease_s * 1000), now_ms()
            chunk_ids = [job_id for job_id in self.tasks if job_id in self._chunk_ids]
            sync_ids = [job_id for job_id in self.tasks if job_id not in self._chunk_ids]
            try:
                async with self.pool.pipeline(transaction=False) as pipe:
                    self._sync.renew_in(pipe, sync_ids, lease_ms, now)
                    self._chunks.renew_in(pipe, chunk_ids, lease_ms, now)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("renewing job leases failed (%r)", exc)

    async def close(self) -> None:
        if self._lease_task is not None:
            self._lease_task.cancel()
        await super().close()


def build_worker(settings: Settings) -> EmbeddingWorker:
    wake_ups = WakeUps()
    return EmbeddingWorker(
        **get_kwargs(cast(Any, WorkerSettings)),
        wake_ups=wake_ups,
        lease_s=settings.job_lease_s,
        prefetch_texts=settings.worker_prefetch_texts,
        max_chunks=settings.worker_max_chunks,
        redis_pool=connect(settings),
        max_jobs=settings.worker_max_jobs,
        # a job never runs past its request's deadline; arq's limit is only a backstop
        job_timeout=settings.request_timeout_s + 10,
        # for a stock arq runner: one more try than the service's limit lets the service tell the client it gave up
        max_tries=settings.max_job_attempts + 1,
        job_completion_wait=int(settings.shutdown_grace_s),
        ctx={"wake_ups": wake_ups},
    )

"""A worker process: arq's ``Worker`` for its lifecycle, with a claim loop of our own made for many short jobs.

What arq does here: the process's life (``Worker.run``: start-up and shutdown hooks, SIGTERM/SIGINT handling
that stops taking jobs and waits up to ``shutdown_grace_s`` for the held ones, the health-check key), the job
format and its job key (``arq:job:*``) and the job serializer hook. A job's lease and its attempts are its queue
entry's score (``shared.job_queue``), not arq's in-progress and retry keys.

What the project does itself, and why (``TaskWorker._poll_iteration`` replaces arq's poll):

- It sleeps until woken (a job was enqueued, or capacity freed up: ``worker.wake_ups``), not for a fixed poll
  delay, so a job starts within a Redis round trip of being enqueued.
- It claims the jobs it can take with one script (``shared.job_queue``), not a transaction each, and only as many
  texts as it will encode soon (``worker_prefetch_texts``): the rest stay in Redis for other workers.
- It claims jobs for a short lease (``job_lease_s``) and renews it while it runs them: a dead worker's jobs run
  again elsewhere after the lease, not after arq's whole job timeout.
- It claims chunks of asynchronous jobs by count (``worker_max_chunks``), and only when there may be some.
- It survives Redis going away and coming back (empty), without a restart.

arq is pinned (``pyproject.toml``): ``_poll_iteration``, ``tasks``, ``allow_pick_jobs`` and ``heart_beat`` are
arq's internals, and ``tests/unit/worker/test_app.py`` runs this class through arq's own ``main`` and signal handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Coroutine
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Worker, func
from redis.exceptions import RedisError

from shared import heap, keys
from shared.clock import now_ms
from shared.job_queue import TASK_FUNCTION, ClaimedJob, JobQueue, deserialize_arq_job, serialize_arq_job
from shared.redis_client import connect
from shared.redis_memory import EvictionGuard
from shared.settings import Settings
from shared.workers import WorkerInfo, record_heartbeat, remove_worker
from worker import metrics
from worker.models.device_budget import prefetch_texts
from worker.models.encoder import pick_device
from worker.models.precision import declared_precision
from worker.models.registry import ModelRegistry
from worker.models.source import load_model
from worker.service import TaskService
from worker.wake_ups import IDLE_POLL_S, WakeUps

log = logging.getLogger(__name__)

#: chunks are claimed by count (``worker_max_chunks``), not by texts
_NO_TEXT_BUDGET = 1 << 30


async def _claimed_by_our_loop(ctx: dict[str, Any], message: bytes) -> None:
    """arq needs a function registered under the name our jobs carry; ``TaskWorker`` never calls it."""
    raise RuntimeError(f"{TASK_FUNCTION!r} jobs are run by worker.app.TaskWorker (python -m worker)")


class TaskWorker(Worker):
    def __init__(
        self, settings: Settings, service: TaskService, redis: ArqRedis, *, handle_signals: bool = True
    ) -> None:
        super().__init__(
            functions=[func(_claimed_by_our_loop, name=TASK_FUNCTION, keep_result=0)],
            queue_name=keys.SYNC_QUEUE,
            redis_pool=redis,
            on_startup=self._startup,
            on_shutdown=self._shutdown,
            handle_signals=handle_signals,
            max_jobs=settings.worker_max_jobs,
            # a job never runs past its request's deadline; arq's limit is only a backstop
            job_timeout=settings.request_timeout_s + 10,
            keep_result=0,
            poll_delay=0,
            # arq types it int but waits with asyncio.wait_for, which takes fractions of a second too
            job_completion_wait=settings.shutdown_grace_s,  # type: ignore[arg-type]
            job_serializer=serialize_arq_job,
            job_deserializer=deserialize_arq_job,
        )
        self.settings = settings
        self.service = service
        self.wake_ups = WakeUps()
        self._lease_ms = int(settings.job_lease_s * 1000)
        self._sync = JobQueue.sync(redis)
        self._chunks = JobQueue.chunks(redis)
        self._held_texts = 0
        #: the held jobs that are chunks (their leases are renewed in the chunk queue)
        self._chunk_ids: set[str] = set()
        #: each held job's attempt, which its lease's renewals keep in its queue score
        self._attempts: dict[str, int] = {}
        self._background: list[asyncio.Task[None]] = []
        #: no work is claimed while Redis evicts keys (its results could vanish)
        self._guard = EvictionGuard(redis, allow_evicting=settings.allow_evicting_redis)

    async def _startup(self, ctx: dict[str, Any]) -> None:
        settings, registry = self.settings, self.service.registry
        if settings.worker_metrics_port:
            metrics.serve(settings.worker_metrics_port, settings.worker_metrics_address)
        for name in settings.embed_models:
            with contextlib.suppress(Exception):  # a model that fails to load is reported and served as an error
                model = await registry.get(name)
                loaded = model.model
                warm_up = (
                    loaded.prepare([], truncate=True, param="input")
                    if loaded.kind == "embedding"
                    else loaded.texts(["warm up"], prompt="", task=None, truncate=True)[0]
                    if loaded.kind == "multivector"
                    else loaded.sequences(["warm up"], prompt="", task=None, truncate=True)[0]
                    if loaded.kind == "sparse"
                    else loaded.pairs("warm", ["up"], truncate=True)[0]
                )
                group = loaded.group(None) if loaded.kind == "sparse" else 0
                await model.batcher.submit([warm_up], group=group)
        self._background = [
            asyncio.create_task(self._heartbeat()),
            asyncio.create_task(self.wake_ups.listen(self.pool)),
            asyncio.create_task(self._renew_leases()),
        ]
        heap.settle()
        names = ", ".join(registry.loaded_names()) or "none"
        log.info("worker %s ready; models: %s", self.service.worker_id, names)
        if settings.ready_file is not None:  # what a readiness probe reads: the start-up models are loaded
            settings.ready_file.write_text(names + "\n")

    async def _shutdown(self, ctx: dict[str, Any]) -> None:
        if self.settings.ready_file is not None:
            self.settings.ready_file.unlink(missing_ok=True)
        for task in self._background:
            task.cancel()
        size, requests = self.service.largest_batch
        counters = ", ".join(f"{name} {count}" for name, count in metrics.job_counts().items())
        log.info(
            "worker %s stopped: %s; largest batch: %d sequences from %d requests",
            self.service.worker_id,
            counters,
            size,
            requests,
        )
        await self.service.registry.close()
        with contextlib.suppress(RedisError, OSError):
            await remove_worker(self.pool, self.service.worker_id)

    async def _poll_iteration(self) -> None:
        self.wake_ups.event.clear()  # before reading the queue: a job enqueued meanwhile sets it again
        try:
            if self.allow_pick_jobs and await self._guard.safe():
                await self._claim_sync_jobs()
                if self.wake_ups.look_at_chunks():
                    await self._claim_chunks()
            await self.heart_beat()
        except (RedisError, OSError) as exc:
            log.warning("reading the queue failed (%r); retrying", exc)
            await asyncio.sleep(0.5)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake_ups.event.wait(), IDLE_POLL_S)

    async def _claim_sync_jobs(self) -> None:
        room = self.max_jobs - len(self.tasks)
        prefetch = prefetch_texts(self.settings.worker_prefetch_texts, self.settings.device)
        if room <= 0 or self._held_texts >= prefetch:
            return
        for job in await self._sync.claim(room, prefetch - self._held_texts, self._lease_ms, now_ms()):
            self._held_texts += job.texts
            self._start(job, self.service.handle_entry(job.job_id, job.messages, job.attempt), chunk=False)
        metrics.HELD_TEXTS.set(self._held_texts)

    async def _claim_chunks(self) -> None:
        room = self.settings.worker_max_chunks - len(self._chunk_ids)
        if room <= 0:
            return
        for job in await self._chunks.claim(room, _NO_TEXT_BUDGET, self._lease_ms, now_ms()):
            # a chunk is an entry of its own, one message
            work = self.service.handle_chunk(job.job_id, job.messages[0], job.attempt, cancelled=job.cancelled)
            self._start(job, work, chunk=True)

    def _start(self, job: ClaimedJob, work: Coroutine[Any, Any, None], *, chunk: bool) -> None:
        if chunk:
            self._chunk_ids.add(job.job_id)
        task = asyncio.create_task(work)
        self.tasks[job.job_id] = task
        self._attempts[job.job_id] = job.attempt
        task.add_done_callback(functools.partial(self._job_done, job, chunk))

    def _full(self) -> bool:
        return (
            len(self.tasks) >= self.max_jobs
            or self._held_texts >= prefetch_texts(self.settings.worker_prefetch_texts, self.settings.device)
            or len(self._chunk_ids) >= self.settings.worker_max_chunks
        )

    def _job_done(self, job: ClaimedJob, chunk: bool, task: asyncio.Task[None]) -> None:
        was_full = self._full()
        self.tasks.pop(job.job_id, None)
        self._attempts.pop(job.job_id, None)
        if chunk:
            self._chunk_ids.discard(job.job_id)
            self.wake_ups.chunks_may_wait()
        else:
            self._held_texts -= job.texts
            metrics.HELD_TEXTS.set(self._held_texts)
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s failed outside the service: %r", job.job_id, task.exception())
        if was_full:
            self.wake_ups.event.set()

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.settings.job_lease_s / 3)
            if not self.tasks:
                continue
            now = now_ms()
            chunk_ids = {job_id: self._attempts.get(job_id, 1) for job_id in self.tasks if job_id in self._chunk_ids}
            sync_ids = {job_id: self._attempts.get(job_id, 1) for job_id in self.tasks if job_id not in self._chunk_ids}
            try:
                async with self.pool.pipeline(transaction=False) as pipe:
                    self._sync.renew_in(pipe, sync_ids, self._lease_ms, now)
                    self._chunks.renew_in(pipe, chunk_ids, self._lease_ms, now)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("renewing job leases failed (%r)", exc)

    async def _heartbeat(self) -> None:
        device = pick_device(self.settings.device)
        started_ms = now_ms()
        while True:
            service = self.service
            info = WorkerInfo(
                service.worker_id,
                device,
                models=service.registry.loaded_names(),
                started_ms=started_ms,
                counters=metrics.job_counts(),
                model_cards=service.registry.describe_loaded(),
            )
            try:
                await record_heartbeat(self.pool, info, self.settings.worker_ttl_s)
            except (RedisError, OSError) as exc:
                log.warning("heartbeat failed: %r", exc)
            await asyncio.sleep(self.settings.worker_heartbeat_s)


def build_worker(settings: Settings) -> TaskWorker:
    """The worker the settings describe; PrecisionUnavailable if its device cannot compute ``DTYPE`` natively."""
    declared_precision(settings.dtype, pick_device(settings.device))
    redis = connect(settings)
    registry = ModelRegistry(
        functools.partial(load_model, settings=settings),
        max_loaded=settings.max_loaded_models,
        failure_ttl_s=settings.model_failure_ttl_s,
        max_batch_size=settings.max_batch_size,
        max_batch_tokens=settings.max_batch_tokens,
    )
    service = TaskService(
        registry,
        redis,
        uuid.uuid4().hex[:12],
        max_attempts=settings.max_job_attempts,
        store_attempts=settings.store_write_attempts,
        max_tokens=settings.max_tokens_per_request,
        openai_token_ids=settings.token_ids == "openai",
    )
    return TaskWorker(settings, service, redis)

"""Test doubles shared by unit tests: a fakeredis-backed arq client and a worker that answers without a model."""

from __future__ import annotations

import asyncio
import contextlib

import fakeredis
import numpy as np
from arq.connections import ArqRedis

from shared import keys
from shared.errors import ErrorKind
from shared.openai_json import data_array
from shared.protocol import EmbedError, EmbedJob, EmbedResult, decode_job, encode_result
from shared.queue import as_job_queue, deserialize_arq_job
from shared.workers import WorkerInfo, now_ms, record_heartbeat

FAKE_DIM = 4


def make_embed_job(**overrides: object) -> EmbedJob:
    """A synchronous job for two short texts, due in ten seconds; any field can be overridden."""
    fields: dict[str, object] = dict(
        request_id="r1",
        model="m",
        input_kind="text",
        inputs=["abc", "de"],
        dimensions=None,
        truncate=True,
        reply_to="emb:reply:test",
        enqueued_ms=now_ms(),
        deadline_ms=now_ms() + 10_000,
    )
    return EmbedJob(**{**fields, **overrides})


def fake_redis_factory(server: fakeredis.FakeServer):
    def factory(settings: object, *, blocking_timeout_s: float = 0.0) -> ArqRedis:
        return as_job_queue(ArqRedis(connection_pool=fakeredis.FakeAsyncRedis(server=server).connection_pool))

    return factory


def fake_vector(text: str) -> list[float]:
    return [float(len(text)), 1.0, 0.0, 0.0]


async def run_fake_worker(redis: ArqRedis, worker_id: str = "fake") -> None:
    """Answer every queued job: text -> [len, 1, 0, 0]; model 'missing' -> model_not_found."""
    await record_heartbeat(redis, WorkerInfo(worker_id, "cpu", ["fake-model"], 0), ttl_s=60)
    while True:
        popped = await redis.zpopmin(keys.SYNC_QUEUE)
        if not popped:
            await asyncio.sleep(0.005)
            continue
        job_id = popped[0][0].decode()
        arq_job = deserialize_arq_job(await redis.get(f"arq:job:{job_id}"))
        job = decode_job(arq_job["a"][0])
        if job.model == "missing":
            result = EmbedResult(job.request_id, error=EmbedError(ErrorKind.MODEL_NOT_FOUND, "no such model", "model"))
        else:
            vectors = np.array([fake_vector(t) for t in job.inputs], dtype="<f4").tobytes()
            data = data_array(vectors, len(job.inputs), FAKE_DIM, job.encoding_format)
            result = EmbedResult(job.request_id, data=data, count=len(job.inputs), dim=FAKE_DIM, prompt_tokens=7)
        await redis.lpush(job.reply_to, encode_result(result))


@contextlib.asynccontextmanager
async def running(coroutine):
    task = asyncio.create_task(coroutine)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

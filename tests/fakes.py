"""The test doubles of the unit tests, all here: fakeredis clients, a fake model, and a worker that runs the real
``TaskService`` over the fake model, claiming and finishing jobs through ``JobQueue`` as the real worker does."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import fakeredis
import httpx
import numpy as np
from arq.connections import ArqRedis
from fastapi import FastAPI

from api.main import create_app
from shared.clock import now_ms
from shared.errors import ErrorKind, ServiceError
from shared.job_queue import JobQueue
from shared.protocol import EmbedChunk, EmbedTask, RerankTask
from shared.redis_client import as_job_queue
from shared.settings import Settings
from shared.workers import WorkerInfo, record_heartbeat
from worker.models.registry import ModelRegistry
from worker.models.reranker import PairTokens
from worker.service import TaskService

FAKE_DIM = 4
REPLY_TO = "emb:reply:test"


class FakeEncoder:
    """A text of n characters is one token, n; it encodes as [n, 1, 0, 0], raw (the model does not normalize).
    One special token, 0, goes before every sequence; token ids from 100 up are outside the vocabulary. Its one
    prompt, "q", is "Q: "; a prompt's length (its characters) reaches ``encode`` as the batch's prompt length."""

    kind = "embedding"
    device = "cpu"
    dimension = FAKE_DIM
    special_token_count = 1
    normalizes = False
    default_prompt_name: str | None = None

    def __init__(self) -> None:
        self.prompts = {"q": "Q: ", "query": "", "document": ""}
        self.prompt_lengths: list[int] = []

    def describe(self) -> dict[str, object]:
        return {"dimensions": FAKE_DIM, "max_tokens": 100, "prompt_names": list(self.prompts), "normalized": False}

    def prompt_length(self, prompt: str) -> int:
        return len(prompt)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [[len(text)] for text in texts]

    def prepare(self, ids: list[int], *, truncate: bool, param: str) -> list[int]:
        return [0, *ids]

    def check_token_ids(self, sequences: Sequence[Sequence[int]]) -> None:
        if any(token >= 100 for sequence in sequences for token in sequence):
            raise ServiceError(ErrorKind.INVALID_REQUEST, "token id out of range", "input")

    def encode(self, batch: Sequence[list[int]], prompt_length: int = 0) -> np.ndarray:
        self.prompt_lengths.append(prompt_length)
        return np.array([[ids[-1], 1, 0, 0] for ids in batch], dtype=np.float32)


class FakeReranker:
    """A pair's logit is its document's length in characters; the "activation" multiplies it by 10. Names ending
    in "-2" have two labels."""

    kind = "reranker"
    device = "cpu"

    def __init__(self, num_labels: int = 1) -> None:
        self.num_labels = num_labels

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": self.num_labels}

    def pairs(
        self, query: str, documents: Sequence[str], *, truncate: bool, max_tokens_per_doc: int | None = None
    ) -> list[PairTokens]:
        return [
            PairTokens({"input_ids": [0] * len(query) + [1] * len(document[:max_tokens_per_doc])})
            for document in documents
        ]

    def encode(self, batch: Sequence[PairTokens], group: int = 0) -> np.ndarray:
        rows = [[float(sum(pair.features["input_ids"]))] * self.num_labels for pair in batch]
        return np.array(rows, dtype=np.float32)

    def scores(self, logits: np.ndarray, *, raw: bool = False) -> np.ndarray:
        scores = logits if raw else logits * 10
        return scores[:, 0] if self.num_labels == 1 else scores


def fake_vector(text: str) -> list[float]:
    """What ``FakeEncoder`` gives for ``text``."""
    return [float(len(text)), 1.0, 0.0, 0.0]


class Loader:
    """Loads a ``FakeEncoder`` for any name but those in ``failing`` (404), "crash" (an unexpected error) and
    "reranker..." (a ``FakeReranker``); clear ``release`` to hold loads until it is set."""

    def __init__(self, failing: Sequence[str] = ()) -> None:
        self.calls: list[str] = []
        self.failing = set(failing)
        self.release = threading.Event()
        self.release.set()

    def __call__(self, name: str) -> FakeEncoder | FakeReranker:
        self.calls.append(name)
        self.release.wait(5)
        if name in self.failing:
            raise ServiceError(ErrorKind.MODEL_NOT_FOUND, f"model {name!r} was not found", "model")
        if name == "crash":
            raise RuntimeError("/secret/path exploded")
        if name.startswith("reranker"):
            return FakeReranker(2 if name.endswith("-2") else 1)
        return FakeEncoder()


def make_registry(loader: Loader, max_loaded: int = 2) -> ModelRegistry:
    return ModelRegistry(loader, max_loaded=max_loaded, failure_ttl_s=60, max_batch_size=4, max_batch_tokens=100)


def _what_to_embed() -> dict[str, object]:
    """Two short texts for model "m", due in ten seconds."""
    return dict(
        model="m",
        input_kind="text",
        inputs=["abc", "de"],
        dimensions=None,
        truncate=True,
        prompt_name=None,
        input_type=None,
        normalize=None,
        enqueued_ms=now_ms(),
        deadline_ms=now_ms() + 10_000,
    )


def make_embed_task(**overrides: object) -> EmbedTask:
    """A synchronous job ("r1") answered on ``REPLY_TO``; any field can be overridden."""
    fields = {**_what_to_embed(), "request_id": "r1", "reply_to": REPLY_TO, "encoding_format": "float"}
    return EmbedTask(**{**fields, **overrides})  # type: ignore[arg-type]


def make_rerank_task(**overrides: object) -> RerankTask:
    """A rerank job ("r1") answered on ``REPLY_TO``; any field can be overridden."""
    fields = {
        "request_id": "r1",
        "model": "fake-reranker",
        "query": "q",
        "inputs": ["a", "bb"],
        "truncate": True,
        "max_tokens_per_doc": None,
        "raw_scores": False,
        "enqueued_ms": now_ms(),
        "deadline_ms": now_ms() + 60_000,
        "reply_to": REPLY_TO,
    }
    return RerankTask(**{**fields, **overrides})  # type: ignore[arg-type]


def make_embed_chunk(**overrides: object) -> EmbedChunk:
    """Chunk 0 of job "embjob_1"; any field can be overridden."""
    fields = {**_what_to_embed(), "request_id": "embjob_1-0", "parent_job": "embjob_1", "chunk": 0}
    return EmbedChunk(**{**fields, **overrides})  # type: ignore[arg-type]


def fake_redis_factory(server: fakeredis.FakeServer):
    def factory(settings: object, *, blocking_timeout_s: float = 0.0) -> ArqRedis:
        return as_job_queue(ArqRedis(connection_pool=fakeredis.FakeAsyncRedis(server=server).connection_pool))

    return factory


@contextlib.asynccontextmanager
async def served_app(
    settings: Settings,
    server: fakeredis.FakeServer | None = None,
    *,
    models: Mapping[str, Any] | None = None,
    max_tokens: int = 1 << 62,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The API in process over fakeredis, its lifespan running, served by ``run_fake_worker``, and a client of it."""
    server = server or fakeredis.FakeServer()
    app = create_app(settings, redis_factory=fake_redis_factory(server))
    worker_redis = fake_redis_factory(server)(None)
    async with (
        app.router.lifespan_context(app),
        running(run_fake_worker(worker_redis, models=models, max_tokens=max_tokens)),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        yield app, client
    await worker_redis.aclose()


async def run_fake_worker(
    redis: ArqRedis, worker_id: str = "fake", *, models: Mapping[str, Any] | None = None, max_tokens: int = 1 << 62
) -> None:
    """Serve the sync queue with the real service over ``FakeEncoder`` (model "missing" is not found), or over
    ``models`` (name -> loaded model), batches of at most 4."""
    names = ["fake-model"] if models is None else list(models)
    await record_heartbeat(redis, WorkerInfo(worker_id, "cpu", names, 0), ttl_s=60)
    if models is None:
        registry = make_registry(Loader(failing={"missing"}))
    else:
        registry = ModelRegistry(models.__getitem__, max_loaded=4, failure_ttl_s=60, max_batch_size=4)
    service = TaskService(registry, redis, worker_id, max_attempts=2, max_tokens=max_tokens)
    queue = JobQueue.sync(redis)
    try:
        while True:
            claimed = await queue.claim(64, 1024, 10_000, now_ms())
            if not claimed:
                await asyncio.sleep(0.005)
                continue
            await asyncio.gather(*(service.handle_entry(job.job_id, job.messages, job.attempt) for job in claimed))
    finally:
        await registry.close()


@contextlib.asynccontextmanager
async def running(coroutine):
    task = asyncio.create_task(coroutine)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

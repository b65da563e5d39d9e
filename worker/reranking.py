"""From a rerank job to its scores: the reranker it names, its (query, document) pairs tokenized together, the
model's micro-batcher (the same one, token budget and priorities as embeddings), then the model's activation.
Pure of Redis, as ``worker.pipeline`` is."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np

from shared import tracing
from shared.clock import now_ms
from shared.errors import ErrorKind, ServiceError
from shared.protocol import RerankTask
from worker.batcher import BatchStats
from worker.models.encoder_protocol import Reranker
from worker.models.registry import LoadedModel, ModelRegistry
from worker.pipeline import INLINE_TOKENIZE_CHARS


@dataclasses.dataclass(frozen=True, slots=True)
class Ranked:
    """A score per document, in the job's order; the tokens of its pairs; the batch that served it."""

    scores: np.ndarray
    tokens: int
    stats: BatchStats


class RerankPipeline:
    def __init__(self, registry: ModelRegistry, *, max_tokens: int = 1 << 62) -> None:
        """``max_tokens``: the most a request's pairs may hold together."""
        self.registry = registry
        self._max_tokens = max_tokens

    async def rerank(self, job: RerankTask, *, deadline_ms: int | None = None) -> Ranked:
        """``deadline_ms``: past it, a job still waiting for its model or for a batch fails with a timeout."""
        timeout_s = None if deadline_ms is None else (deadline_ms - now_ms()) / 1000
        model = await self.registry.get(job.model, timeout_s)
        reranker = _reranker_of(model)
        with tracing.span("tokenize", {"embeddings.inputs": len(job.inputs)}):
            if len(job.query) + sum(map(len, job.inputs)) < INLINE_TOKENIZE_CHARS:
                pairs = reranker.pairs(
                    job.query, job.inputs, truncate=job.truncate, max_tokens_per_doc=job.max_tokens_per_doc
                )
            else:
                pairs = await asyncio.to_thread(
                    reranker.pairs,
                    job.query,
                    job.inputs,
                    truncate=job.truncate,
                    max_tokens_per_doc=job.max_tokens_per_doc,
                )
        tokens = sum(map(len, pairs))
        if tokens > self._max_tokens:
            message = f"this request has {tokens} tokens; at most {self._max_tokens} are allowed in one request"
            raise ServiceError(ErrorKind.INVALID_REQUEST, message, "documents")
        encoded = await model.batcher.submit(pairs, urgent=True, deadline_ms=deadline_ms)
        return Ranked(reranker.scores(encoded.vectors, raw=job.raw_scores), tokens, encoded.stats)


def _reranker_of(model: LoadedModel) -> Reranker:
    """The model as a reranker; a 400 if it is an embedding model, or scores a pair more than one way."""
    reranker = model.model
    if reranker.kind != "reranker":
        raise ServiceError(
            ErrorKind.INVALID_REQUEST,
            f"model {model.name!r} is an embedding model, not a reranker; use it with /v1/embeddings",
            "model",
        )
    if reranker.num_labels != 1:
        raise ServiceError(
            ErrorKind.INVALID_REQUEST,
            f"model {model.name!r} gives {reranker.num_labels} scores per pair; ranking needs a model that gives one",
            "model",
        )
    return reranker

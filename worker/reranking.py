"""From a rerank job to its scores: the reranker it names, its (query, document) pairs tokenized together, the
model's micro-batcher (the same one, token budget and priorities as embeddings), then the model's activation.
The steps are ``worker.task_pipeline``'s; this module says what a rerank task does in them. Pure of Redis."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from shared.errors import ErrorKind, ServiceError
from shared.protocol import RerankTask
from worker.batcher import BatchStats, Encoded
from worker.models.encoder_protocol import Reranker
from worker.models.registry import LoadedModel
from worker.task_pipeline import TaskPipeline, Tokenized, model_of_kind

if TYPE_CHECKING:
    from worker.models.reranker import PairTokens  # torch: only a loaded reranker brings it in


@dataclasses.dataclass(frozen=True, slots=True)
class Ranked:
    """A score per document, in the job's order; the tokens of its pairs; the batch that served it."""

    scores: np.ndarray
    tokens: int
    stats: BatchStats


class RerankPipeline(TaskPipeline[RerankTask, Reranker, "PairTokens", Ranked]):
    tokens_param = "documents"

    async def rerank(self, job: RerankTask, *, deadline_ms: int | None = None) -> Ranked:
        """``deadline_ms``: past it, a job still waiting for its model or for a batch fails with a timeout."""
        return await self.run(job, deadline_ms=deadline_ms)

    def prepare(self, loaded: LoadedModel, task: RerankTask) -> Reranker:
        """The model as a reranker; a 400 if it is an embedding model, or scores a pair more than one way."""
        reranker = model_of_kind(loaded, "reranker")
        if reranker.num_labels != 1:
            raise ServiceError(
                ErrorKind.INVALID_REQUEST,
                f"model {loaded.name!r} gives {reranker.num_labels} scores per pair; ranking needs a model that "
                "gives one",
                "model",
            )
        return reranker

    def chars(self, task: RerankTask) -> int:
        return len(task.query) + sum(map(len, task.inputs))

    def sequences(self, plan: Reranker, task: RerankTask) -> list[PairTokens]:
        return plan.pairs(task.query, task.inputs, truncate=task.truncate, max_tokens_per_doc=task.max_tokens_per_doc)

    def result(self, plan: Reranker, task: RerankTask, tokenized: Tokenized[PairTokens], encoded: Encoded) -> Ranked:
        return Ranked(plan.scores(encoded.vectors, raw=task.raw_scores), tokenized.tokens, encoded.stats)

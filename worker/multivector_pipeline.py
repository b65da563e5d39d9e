"""Multi-vector (ColBERT-style) tasks: one vector per token of each text (``TokenEmbedTask``, for ``/pooling`` and
``/embed_all``), and late-interaction rerank (a ``RerankTask`` naming a multi-vector model): the query encoded once
as a query, the documents as documents, in the model's micro-batcher with everyone else's texts, then scored by the
model's own ``similarity`` (MaxSim: for each query token the largest dot product with a document token, summed over
the query's tokens). The steps are ``worker.task_pipeline``'s; pure of Redis."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import orjson

from shared import tracing
from shared.errors import ErrorKind, ServiceError
from shared.protocol import EncodingFormat, RerankTask, TokenEmbedTask
from worker.batcher import BatchStats, Encoded
from worker.long_inputs import refuse_chunking
from worker.models.encoder_protocol import MultiVector
from worker.models.registry import LoadedModel
from worker.reranking import Ranked
from worker.task_pipeline import TaskPipeline, Tokenized, model_of_kind, off_loop, timeout_s

if TYPE_CHECKING:
    from worker.models.multivector_encoder import TokenFeatures  # torch: only a loaded model brings it in

#: the batch group of each task (``worker.models.multivector_encoder.TASKS``), without importing torch here
_GROUPS: dict[str | None, int] = {None: 0, "query": 1, "document": 2}


@dataclasses.dataclass(frozen=True, slots=True)
class TokenVectors:
    """A task's vectors (one (tokens, dimensions) float32 array per text), the tokens the texts became (special
    tokens and prompt included, query expansion not), and the batch that served it."""

    vectors: list[np.ndarray]
    tokens: int
    stats: BatchStats


class Plan(NamedTuple):
    model: MultiVector
    prompt: str
    task: str | None


def _task_of(input_type: str | None) -> str | None:
    if input_type not in (None, "query", "document"):
        raise ServiceError(
            ErrorKind.INVALID_REQUEST, "input_type must be 'query' or 'document' for a multi-vector model", "input_type"
        )
    return input_type


def _prompt(model: MultiVector, prompt_name: str | None, task: str | None) -> str:
    from worker.models.multivector_encoder import resolve_prompt

    return resolve_prompt(model.prompts, model.default_prompt_name, prompt_name, task)


class MultiVectorPipeline(TaskPipeline[TokenEmbedTask, Plan, "TokenFeatures", TokenVectors]):
    tokens_param = "input"

    async def token_embed(self, job: TokenEmbedTask, *, deadline_ms: int | None = None) -> TokenVectors:
        return await self.run(job, deadline_ms=deadline_ms)

    def prepare(self, loaded: LoadedModel, task: TokenEmbedTask) -> Plan:
        model = model_of_kind(loaded, "multivector")
        refuse_chunking(task.truncate)
        kind = _task_of(task.input_type)
        return Plan(model, _prompt(model, task.prompt_name, kind), kind)

    def sequences(self, plan: Plan, task: TokenEmbedTask) -> list[TokenFeatures]:
        return plan.model.texts(task.inputs, prompt=plan.prompt, task=plan.task, truncate=task.truncate)

    def group(self, plan: Plan) -> int:
        return _GROUPS[plan.task]

    def result(
        self, plan: Plan, task: TokenEmbedTask, tokenized: Tokenized[TokenFeatures], encoded: Encoded
    ) -> TokenVectors:
        real = sum(sequence.real_tokens for sequence in tokenized.sequences)
        return TokenVectors(list(encoded.vectors), real, encoded.stats)

    # late-interaction rerank

    async def serves(self, model: str, deadline_ms: int | None) -> bool:
        """Whether ``model`` is a multi-vector model (loading it if need be): its rerank tasks are ours."""
        loaded = await self.registry.get(model, timeout_s(deadline_ms))
        return loaded.model.kind == "multivector"

    async def rerank(self, job: RerankTask, *, deadline_ms: int | None = None) -> Ranked:
        """The query's MaxSim with each document, as the model's ``similarity`` scores ``encode_query`` against
        ``encode_document``. ``max_tokens_per_doc`` cuts each document to that many of its own tokens first;
        ``raw_scores`` changes nothing (MaxSim has no activation)."""
        loaded = await self.registry.get(job.model, timeout_s(deadline_ms))
        model = model_of_kind(loaded, "multivector")
        query_prompt, document_prompt = _prompt(model, None, "query"), _prompt(model, None, "document")
        documents = job.inputs
        if job.max_tokens_per_doc is not None:
            documents = [model.first_tokens(text, job.max_tokens_per_doc) for text in documents]

        def tokenize() -> tuple[list[TokenFeatures], list[TokenFeatures]]:
            query = model.texts([job.query], prompt=query_prompt, task="query", truncate=job.truncate)
            docs = model.texts(documents, prompt=document_prompt, task="document", truncate=job.truncate)
            tokens = sum(map(len, (*query, *docs)))
            if tokens > self._max_tokens:
                message = f"this request has {tokens} tokens; at most {self._max_tokens} are allowed in one request"
                raise ServiceError(ErrorKind.INVALID_REQUEST, message, "documents")
            return query, docs

        with tracing.span("tokenize", {"embeddings.inputs": len(documents) + 1}):
            query, docs = await off_loop(len(job.query) + sum(map(len, documents)), tokenize)
        encoded_query, encoded_docs = await asyncio.gather(
            loaded.batcher.submit(query, group=_GROUPS["query"], deadline_ms=deadline_ms),
            loaded.batcher.submit(docs, group=_GROUPS["document"], deadline_ms=deadline_ms),
        )
        self.batch_seen(encoded_query.stats)
        self.batch_seen(encoded_docs.stats)
        scores = model.similarity(encoded_query.vectors[0], list(encoded_docs.vectors))
        tokens = sum(sequence.real_tokens for sequence in (*query, *docs))
        stats = encoded_docs.stats
        stats.inference_ms = max(stats.inference_ms, encoded_query.stats.inference_ms)
        return Ranked(np.asarray(scores, dtype=np.float32), tokens, stats)


def render(vectors: Sequence[np.ndarray], encoding_format: EncodingFormat, layout: str) -> bytes:
    """The reply's data: for ``layout`` ``pooling``, vLLM's ``data`` items (``{"index", "object": "pooling",
    "data"}``, ``data`` a (tokens, dimensions) nested list, or base64 of its float32 little-endian bytes, row by
    row); for ``tei``, TEI's bare nested lists."""
    rows = [np.ascontiguousarray(vector, dtype="<f4") for vector in vectors]
    if layout == "tei":
        return orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY)
    items: list[dict[str, Any]]
    if encoding_format == "base64":
        items = [
            {"index": i, "object": "pooling", "data": base64.b64encode(row.tobytes()).decode()}
            for i, row in enumerate(rows)
        ]
    else:
        items = [{"index": i, "object": "pooling", "data": row} for i, row in enumerate(rows)]
    return orjson.dumps(items, option=orjson.OPT_SERIALIZE_NUMPY)

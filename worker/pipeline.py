"""From a job's inputs to its vectors: the model and prompt it asks for, tokens, the micro-batcher, the cut and the
normalization it asks for. Pure of Redis: ``worker.sync_jobs`` and ``worker.chunk_jobs`` bring the jobs and take
the vectors away.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from shared import tracing
from shared.chunks import PartResult
from shared.clock import now_ms
from shared.errors import ErrorKind, ServiceError
from shared.openai_json import float_text_bytes
from shared.protocol import EmbedChunk, EmbedInputs, InputKind, TaskError
from worker import openai_tokens
from worker.batcher import BatchStats
from worker.models.encoder_protocol import Encoder
from worker.models.prompts import resolve_prompt
from worker.models.registry import LoadedModel, ModelRegistry

#: jobs with fewer characters than this are tokenized on the event loop; a thread hop costs more than that
INLINE_TOKENIZE_CHARS = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class Embedded:
    """A job's vectors (float32, one row per input), what the model read, and the batch that served it."""

    vectors: np.ndarray
    prompt_tokens: int
    stats: BatchStats


class EmbeddingPipeline:
    def __init__(self, registry: ModelRegistry, *, max_tokens: int = 1 << 62, openai_token_ids: bool = False) -> None:
        """``max_tokens``: the most a request may hold. ``openai_token_ids``: token-id input is OpenAI's cl100k_base
        ids (``TOKEN_IDS=openai``), not the model's."""
        self.registry = registry
        self._max_tokens = max_tokens
        self._openai_token_ids = openai_token_ids
        #: sequences and requests of the largest batch seen
        self.largest_batch = (0, 0)

    async def embed(self, job: EmbedInputs, *, urgent: bool = True, deadline_ms: int | None = None) -> Embedded:
        """``deadline_ms``: past it, a job still waiting for its model to load or for a batch fails with a timeout;
        one already in a running batch finishes with it."""
        model, encoder, prompt = await self._model_for(job, deadline_ms)
        with tracing.span("tokenize", {"embeddings.inputs": len(job.inputs)}):
            if sum(map(len, job.inputs)) < INLINE_TOKENIZE_CHARS:
                sequences = self._sequences(encoder, job, job.inputs, prompt)
            else:
                sequences = await asyncio.to_thread(self._sequences, encoder, job, job.inputs, prompt)
        return await self._encode(model, encoder, job, sequences, prompt, urgent=urgent, deadline_ms=deadline_ms)

    async def embed_parts(self, job: EmbedChunk, parts: list[int]) -> tuple[np.ndarray | None, list[PartResult]]:
        """A batch chunk: each request (``parts``) is tokenized and checked alone, so one that cannot be encoded
        fails by itself; the others are encoded together. Rows of the requests that succeeded, in order."""
        model, encoder, prompt = await self._model_for(job, None)

        def tokenize() -> list[list[list[int]] | ServiceError]:
            tokenized: list[list[list[int]] | ServiceError] = []
            for start, end in itertools.pairwise(itertools.accumulate(parts, initial=0)):
                try:
                    tokenized.append(self._sequences(encoder, job, job.inputs[start:end], prompt))
                except ServiceError as exc:
                    tokenized.append(exc)
            return tokenized

        small = sum(map(len, job.inputs)) < INLINE_TOKENIZE_CHARS
        tokenized = tokenize() if small else await asyncio.to_thread(tokenize)
        sequences = [sequence for part in tokenized if isinstance(part, list) for sequence in part]
        vectors = None
        if sequences:
            embedded = await self._encode(model, encoder, job, sequences, prompt, urgent=False, deadline_ms=None)
            vectors = embedded.vectors
        results = []
        offset = 0
        for part in tokenized:
            if isinstance(part, ServiceError):
                results.append(PartResult(error=TaskError(part.kind, part.message, part.param)))
                continue
            assert vectors is not None
            rows = vectors[offset : offset + len(part)]
            offset += len(part)
            results.append(PartResult(_prompt_tokens(encoder, part), float_text_bytes=float_text_bytes(rows)))
        return vectors, results

    async def _model_for(self, job: EmbedInputs, deadline_ms: int | None) -> tuple[LoadedModel, Encoder, str]:
        """The job's model, loaded, and the prompt its options choose; ServiceError if they do not fit the model
        (a reranker is not an embedding model)."""
        timeout_s = None if deadline_ms is None else (deadline_ms - now_ms()) / 1000
        model = await self.registry.get(job.model, timeout_s)
        encoder = model.model
        if encoder.kind != "embedding":
            raise ServiceError(
                ErrorKind.INVALID_REQUEST,
                f"model {job.model!r} is a reranker, not an embedding model; use it with /v1/rerank",
                "model",
            )
        if job.dimensions is not None and not 0 < job.dimensions <= encoder.dimension:
            raise ServiceError(
                ErrorKind.INVALID_REQUEST,
                f"dimensions must be between 1 and {encoder.dimension} for this model",
                "dimensions",
            )
        return (
            model,
            encoder,
            resolve_prompt(encoder.prompts, encoder.default_prompt_name, job.prompt_name, job.input_type),
        )

    def _sequences(self, encoder: Encoder, job: EmbedInputs, inputs: list[Any], prompt: str) -> list[list[int]]:
        """One request's model inputs, refused if they hold more tokens than a request may."""
        sequences = _model_inputs(encoder, job.input_kind, inputs, prompt, job.truncate, self._openai_token_ids)
        tokens = sum(map(len, sequences))
        if tokens > self._max_tokens:
            message = f"this request has {tokens} tokens; at most {self._max_tokens} are allowed in one request"
            raise ServiceError(ErrorKind.INVALID_REQUEST, message, "input")
        return sequences

    async def _encode(
        self,
        model: LoadedModel,
        encoder: Encoder,
        job: EmbedInputs,
        sequences: list[list[int]],
        prompt: str,
        *,
        urgent: bool,
        deadline_ms: int | None,
    ) -> Embedded:
        """Encode through the model's batcher, then cut to ``dimensions`` and normalize as the job asks."""
        group = encoder.prompt_length(prompt)  # sequences whose pooling leaves out prompts of one length batch together
        encoded = await model.batcher.submit(sequences, group=group, urgent=urgent, deadline_ms=deadline_ms)
        vectors = encoded.vectors
        if job.dimensions is not None and job.dimensions < vectors.shape[1]:
            vectors = vectors[:, : job.dimensions]
        if encoder.normalizes if job.normalize is None else job.normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        stats = encoded.stats
        if stats.batch_size > self.largest_batch[0]:
            self.largest_batch = (stats.batch_size, stats.batch_requests)
        return Embedded(vectors.astype(np.float32, copy=False), _prompt_tokens(encoder, sequences), stats)


def _prompt_tokens(encoder: Encoder, sequences: list[list[int]]) -> int:
    """What the model read of the client's inputs and prompts, without its special tokens."""
    return sum(map(len, sequences)) - len(sequences) * encoder.special_token_count


def _model_inputs(
    encoder: Encoder, input_kind: InputKind, inputs: list[Any], prompt: str, truncate: bool, openai_token_ids: bool
) -> list[list[int]]:
    """Token ids with the prompt and special tokens, cut or refused per ``truncate``. CPU work: large jobs run
    it in a thread. A text and its prompt are tokenized as one string, as sentence-transformers does.
    ``openai_token_ids``: token-id input is cl100k_base ids, decoded to text first."""
    texts: Sequence[str] | None = inputs if input_kind == "text" else None
    if texts is None and openai_token_ids:
        texts = openai_tokens.decode(inputs)
    if texts is not None:
        token_ids: Sequence[list[int]] = encoder.tokenize([prompt + text for text in texts])
    else:
        encoder.check_token_ids(inputs)
        prompt_ids = encoder.tokenize([prompt])[0] if prompt else []
        token_ids = [prompt_ids + list(ids) for ids in inputs]
    return [encoder.prepare(list(ids), truncate=truncate, param="input") for ids in token_ids]

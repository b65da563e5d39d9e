"""From a job's inputs to its vectors: the model and prompt it asks for, tokens, the micro-batcher, the cut and the
normalization it asks for. The steps are ``worker.task_pipeline``'s; this module says what an embedding task
does in them. Pure of Redis: ``worker.sync_jobs`` and ``worker.chunk_jobs`` bring the jobs and take the vectors
away.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from shared.chunks import PartResult
from shared.errors import ErrorKind, ServiceError
from shared.openai_json import float_text_bytes
from shared.protocol import EmbedChunk, EmbedInputs, TaskError
from worker import openai_tokens
from worker.batcher import BatchStats, Encoded
from worker.models.encoder_protocol import Encoder
from worker.models.prompts import resolve_prompt
from worker.models.registry import LoadedModel, ModelRegistry
from worker.task_pipeline import TaskPipeline, Tokenized, model_of_kind, off_loop


@dataclasses.dataclass(frozen=True, slots=True)
class Embedded:
    """A job's vectors (float32, one row per input), what the model read, and the batch that served it."""

    vectors: np.ndarray
    prompt_tokens: int
    stats: BatchStats


class Embedding(NamedTuple):
    """An embedding job's model and the prompt its options choose."""

    encoder: Encoder
    prompt: str


class EmbeddingPipeline(TaskPipeline[EmbedInputs, Embedding, list[int], Embedded]):
    tokens_param = "input"

    def __init__(self, registry: ModelRegistry, *, max_tokens: int = 1 << 62, openai_token_ids: bool = False) -> None:
        """``max_tokens``: the most a request may hold. ``openai_token_ids``: token-id input is OpenAI's cl100k_base
        ids (``TOKEN_IDS=openai``), not the model's."""
        super().__init__(registry, max_tokens=max_tokens)
        self._openai_token_ids = openai_token_ids

    async def embed(self, job: EmbedInputs, *, urgent: bool = True, deadline_ms: int | None = None) -> Embedded:
        """``deadline_ms``: past it, a job still waiting for its model to load or for a batch fails with a timeout;
        one already in a running batch finishes with it."""
        return await self.run(job, urgent=urgent, deadline_ms=deadline_ms)

    def prepare(self, loaded: LoadedModel, task: EmbedInputs) -> Embedding:
        """The job's model and the prompt its options choose; ServiceError if they do not fit the model."""
        encoder = model_of_kind(loaded, "embedding")
        if task.dimensions is not None and not 0 < task.dimensions <= encoder.dimension:
            raise ServiceError(
                ErrorKind.INVALID_REQUEST,
                f"dimensions must be between 1 and {encoder.dimension} for this model",
                "dimensions",
            )
        prompt = resolve_prompt(encoder.prompts, encoder.default_prompt_name, task.prompt_name, task.input_type)
        return Embedding(encoder, prompt)

    def sequences(self, plan: Embedding, task: EmbedInputs) -> list[list[int]]:
        return self._model_inputs(plan, task, task.inputs)

    def group(self, plan: Embedding) -> int:
        """Sequences whose pooling leaves out prompts of one length batch together."""
        return plan.encoder.prompt_length(plan.prompt)

    def result(self, plan: Embedding, task: EmbedInputs, tokenized: Tokenized[list[int]], encoded: Encoded) -> Embedded:
        """Cut to ``dimensions`` and normalized as the job asks."""
        vectors = encoded.vectors
        if task.dimensions is not None and task.dimensions < vectors.shape[1]:
            vectors = vectors[:, : task.dimensions]
        if plan.encoder.normalizes if task.normalize is None else task.normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        prompt_tokens = tokenized.tokens - len(tokenized.sequences) * plan.encoder.special_token_count
        return Embedded(vectors.astype(np.float32, copy=False), prompt_tokens, encoded.stats)

    async def embed_parts(self, job: EmbedChunk, parts: list[int]) -> tuple[np.ndarray | None, list[PartResult]]:
        """A batch chunk: each request (``parts``) is tokenized and checked alone, so one that cannot be encoded
        fails by itself; the others are encoded together. Rows of the requests that succeeded, in order."""
        loaded = await self.registry.get(job.model)
        plan = self.prepare(loaded, job)

        def tokenize() -> list[Tokenized[list[int]] | ServiceError]:
            tokenized: list[Tokenized[list[int]] | ServiceError] = []
            for start, end in itertools.pairwise(itertools.accumulate(parts, initial=0)):
                try:
                    sequences = self._model_inputs(plan, job, job.inputs[start:end])
                    tokenized.append(Tokenized(sequences, self.within_limit(sequences)))
                except ServiceError as exc:
                    tokenized.append(exc)
            return tokenized

        tokenized = await off_loop(self.chars(job), tokenize)
        good = [part for part in tokenized if isinstance(part, Tokenized)]
        vectors = None
        if good:
            sequences = [sequence for part in good for sequence in part.sequences]
            encoded: Encoded = await loaded.batcher.submit(sequences, group=self.group(plan), urgent=False)
            self.batch_seen(encoded.stats)
            vectors = self.result(plan, job, Tokenized(sequences, sum(part.tokens for part in good)), encoded).vectors
        results = []
        offset = 0
        for part in tokenized:
            if isinstance(part, ServiceError):
                results.append(PartResult(error=TaskError(part.kind, part.message, part.param)))
                continue
            assert vectors is not None
            rows = vectors[offset : offset + len(part.sequences)]
            offset += len(part.sequences)
            prompt_tokens = part.tokens - len(part.sequences) * plan.encoder.special_token_count
            results.append(PartResult(prompt_tokens, float_text_bytes=float_text_bytes(rows)))
        return vectors, results

    def _model_inputs(self, plan: Embedding, job: EmbedInputs, inputs: list[Any]) -> list[list[int]]:
        """Token ids with the prompt and special tokens, cut or refused per ``truncate``. A text and its prompt are
        tokenized as one string, as sentence-transformers does. Token-id input read as cl100k_base ids
        (``openai_token_ids``) is decoded to text first."""
        encoder, prompt = plan
        texts: Sequence[str] | None = inputs if job.input_kind == "text" else None
        if texts is None and self._openai_token_ids:
            texts = openai_tokens.decode(inputs)
        if texts is not None:
            token_ids: Sequence[list[int]] = encoder.tokenize([prompt + text for text in texts])
        else:
            encoder.check_token_ids(inputs)
            prompt_ids = encoder.tokenize([prompt])[0] if prompt else []
            token_ids = [prompt_ids + list(ids) for ids in inputs]
        return [encoder.prepare(list(ids), truncate=job.truncate, param="input") for ids in token_ids]

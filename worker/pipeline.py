"""From a job's inputs to its vectors: the model and prompt it asks for, tokens, the micro-batcher, the cut and the
normalization it asks for. The steps are ``worker.task_pipeline``'s; this module says what an embedding task
does in them. Pure of Redis: ``worker.sync_jobs`` and ``worker.chunk_jobs`` bring the jobs and take the vectors
away. ``truncate: "chunk"`` splits an over-long input into chunks and pools their rows back (``worker.long_inputs``).

A ``mixed`` job (texts and images, for a model whose ``modalities`` include ``image``) has its images decoded or
fetched within the deployment's bounds (``worker.images``), made the model's input by its own processor
(``Encoder.image_inputs``) and batched apart from texts (``IMAGE_GROUP``); the rows come back in the job's order.
Prompts apply to texts only, as ``encode`` applies them; an image counts its vision tokens in ``usage``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from shared.chunks import PartResult
from shared.errors import ErrorKind, ServiceError
from shared.openai_json import float_text_bytes
from shared.protocol import IMAGE_KEY, EmbedChunk, EmbedInputs, TaskError
from shared.settings import get_settings
from worker import long_inputs, openai_tokens
from worker.batcher import BatchStats, Encoded
from worker.images import ImagePolicy, load_image
from worker.models.encoder import IMAGE_GROUP, ImageInput
from worker.models.encoder_protocol import Encoder
from worker.models.prompts import resolve_prompt
from worker.models.registry import LoadedModel, ModelRegistry
from worker.task_pipeline import INLINE_TOKENIZE_CHARS, TaskPipeline, Tokenized, model_of_kind, off_loop

#: one model input: a text's token ids (special tokens included) or an image's features
ModelInput = list[int] | ImageInput


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


class EmbeddingPipeline(TaskPipeline[EmbedInputs, Embedding, ModelInput, Embedded]):
    tokens_param = "input"

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        max_tokens: int = 1 << 62,
        openai_token_ids: bool = False,
        chunk_overlap_tokens: int = 0,
        image_policy: ImagePolicy | None = None,
    ) -> None:
        """``max_tokens``: the most a request may hold. ``openai_token_ids``: token-id input is OpenAI's cl100k_base
        ids (``TOKEN_IDS=openai``), not the model's. ``chunk_overlap_tokens``: text tokens consecutive chunks of a
        chunked input share (``CHUNK_OVERLAP_TOKENS``, ``worker.long_inputs``). ``image_policy``: what images are
        accepted (the ``IMAGE_*`` settings by default)."""
        super().__init__(registry, max_tokens=max_tokens)
        self._openai_token_ids = openai_token_ids
        self._chunk_overlap_tokens = chunk_overlap_tokens
        self._image_policy = image_policy or ImagePolicy.from_settings(get_settings())

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
        if task.input_kind == "mixed" and "image" not in encoder.modalities and _images_of(task.inputs):
            encoder.image_inputs([], model=task.model)  # a text-only model refuses images, saying so
        prompt = resolve_prompt(encoder.prompts, encoder.default_prompt_name, task.prompt_name, task.input_type)
        return Embedding(encoder, prompt)

    def sequences(self, plan: Embedding, task: EmbedInputs) -> list[ModelInput]:
        return self._model_inputs(plan, task, task.inputs)

    def chars(self, task: EmbedInputs) -> int:
        """An image is decoded (or fetched) off the event loop, however short its URL."""
        return sum(INLINE_TOKENIZE_CHARS if isinstance(item, dict) else len(item) for item in task.inputs)

    def group(self, plan: Embedding) -> int:
        """Sequences whose pooling leaves out prompts of one length batch together."""
        return plan.encoder.prompt_length(plan.prompt)

    def groups(self, plan: Embedding, sequences: Sequence[ModelInput]) -> int | list[int]:
        """Images batch apart from texts."""
        text_group = self.group(plan)
        if not any(isinstance(sequence, ImageInput) for sequence in sequences):
            return text_group
        return [IMAGE_GROUP if isinstance(sequence, ImageInput) else text_group for sequence in sequences]

    def result(
        self, plan: Embedding, task: EmbedInputs, tokenized: Tokenized[ModelInput], encoded: Encoded
    ) -> Embedded:
        """Cut to ``dimensions`` and normalized as the job asks; a chunked job's rows pooled back per input first."""
        vectors = encoded.vectors
        if isinstance(tokenized.sequences, long_inputs.Chunked):
            vectors = long_inputs.pool(vectors, tokenized.sequences)
        if task.dimensions is not None and task.dimensions < vectors.shape[1]:
            vectors = vectors[:, : task.dimensions]
        if plan.encoder.normalizes if task.normalize is None else task.normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        prompt_tokens = _prompt_tokens(plan.encoder, tokenized.sequences, tokenized.tokens)
        return Embedded(vectors.astype(np.float32, copy=False), prompt_tokens, encoded.stats)

    async def embed_parts(self, job: EmbedChunk, parts: list[int]) -> tuple[np.ndarray | None, list[PartResult]]:
        """A batch chunk: each request (``parts``) is tokenized and checked alone, so one that cannot be encoded
        fails by itself; the others are encoded together. Rows of the requests that succeeded, in order."""
        loaded = await self.registry.get(job.model)
        plan = self.prepare(loaded, job)

        def tokenize() -> list[Tokenized[ModelInput] | ServiceError]:
            tokenized: list[Tokenized[ModelInput] | ServiceError] = []
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
            sequences = long_inputs.join([part.sequences for part in good])
            groups = self.groups(plan, sequences)
            encoded: Encoded = await loaded.batcher.submit(sequences, group=groups, urgent=False)
            self.batch_seen(encoded.stats)
            vectors = self.result(plan, job, Tokenized(sequences, sum(part.tokens for part in good)), encoded).vectors
        results = []
        offset = 0
        for part, inputs in zip(tokenized, parts, strict=True):
            if isinstance(part, ServiceError):
                results.append(PartResult(error=TaskError(part.kind, part.message, part.param)))
                continue
            assert vectors is not None
            rows = vectors[offset : offset + inputs]  # one row per input; a chunked input's chunks are pooled
            offset += inputs
            prompt_tokens = _prompt_tokens(plan.encoder, part.sequences, part.tokens)
            results.append(PartResult(prompt_tokens, float_text_bytes=float_text_bytes(rows)))
        return vectors, results

    def _model_inputs(self, plan: Embedding, job: EmbedInputs, inputs: list[Any]) -> list[ModelInput]:
        """Token ids with the prompt and special tokens, cut or refused per ``truncate``, or chunked
        (``_chunked``). A text and its prompt are tokenized as one string, as sentence-transformers does. Token-id
        input read as cl100k_base ids (``openai_token_ids``) is decoded to text first. Images: ``_mixed``."""
        if job.input_kind == "mixed":
            return self._mixed(plan, job, inputs)
        return self._text_inputs(plan, job, inputs)

    def _text_inputs(self, plan: Embedding, job: EmbedInputs, inputs: list[Any]) -> list[Any]:
        """Each text's (or token-id list's) sequence, or its chunks (a ``long_inputs.Chunked``)."""
        encoder, prompt = plan
        texts: Sequence[str] | None = inputs if job.input_kind != "tokens" else None
        if texts is None and self._openai_token_ids:
            texts = openai_tokens.decode(inputs)
        if texts is not None:
            token_ids: Sequence[list[int]] = encoder.tokenize([prompt + text for text in texts])
        else:
            encoder.check_token_ids(inputs)
            prompt_ids = encoder.tokenize([prompt])[0] if prompt else []
            token_ids = [prompt_ids + list(ids) for ids in inputs]
        truncate = long_inputs.truncation(job.truncate)
        if truncate == "chunk":
            return self._chunked(plan, token_ids, texts)
        return [encoder.prepare(list(ids), truncate=truncate, param="input") for ids in token_ids]

    def _chunked(
        self, plan: Embedding, token_ids: Sequence[list[int]], texts: Sequence[str] | None
    ) -> long_inputs.Chunked:
        """Every chunk of every input (``worker.long_inputs``): ``token_ids`` are the inputs' ids with the prompt,
        ``texts`` the texts they came from (None for token-id input, which always starts with the prompt's ids)."""
        encoder, prompt = plan
        chunking = long_inputs.Chunking.of(encoder, prompt, self._chunk_overlap_tokens)

        def text_ids(index: int) -> list[int]:
            assert texts is not None
            return encoder.tokenize([texts[index]])[0]

        return long_inputs.split(encoder, chunking, token_ids, text_ids)

    def _mixed(self, plan: Embedding, job: EmbedInputs, inputs: list[Any]) -> list[ModelInput]:
        """Texts as ``_text_inputs`` makes them and images as the model's processor does, in the job's order (a
        chunked text's chunks in its place). A bad image is a 400 for this job alone (``worker.images``)."""
        images = [load_image(source, self._image_policy) for source in _images_of(inputs)]
        image_inputs: Iterator[ImageInput] = iter(plan.encoder.image_inputs(images, model=job.model) if images else [])
        texts = [item for item in inputs if isinstance(item, str)]
        text_inputs = self._text_inputs(plan, job, texts) if texts else long_inputs.Chunked()
        counts = iter(text_inputs.counts if isinstance(text_inputs, long_inputs.Chunked) else [1] * len(texts))
        weights = iter(text_inputs.weights if isinstance(text_inputs, long_inputs.Chunked) else [1] * len(texts))
        rows = iter(text_inputs)
        merged = long_inputs.Chunked()
        for item in inputs:
            if isinstance(item, str):
                count = next(counts)
                merged.extend(itertools.islice(rows, count))
                merged.weights.extend(itertools.islice(weights, count))
            else:
                count = 1
                merged.append(next(image_inputs))
                merged.weights.append(1)
            merged.counts.append(count)
        # chunked jobs keep their layout, even when all their inputs are images (``long_inputs.join``)
        return merged if long_inputs.truncation(job.truncate) == "chunk" else list(merged)


def _images_of(inputs: Sequence[Any]) -> list[str]:
    """The image sources of a ``mixed`` job's inputs, in order."""
    return [item[IMAGE_KEY] for item in inputs if isinstance(item, dict)]


def _prompt_tokens(encoder: Encoder, sequences: Sequence[ModelInput], tokens: int) -> int:
    """What ``usage`` counts: a text's tokens less its special tokens, an image's vision tokens."""
    texts = sum(1 for sequence in sequences if not isinstance(sequence, ImageInput))
    return tokens - texts * encoder.special_token_count

"""A validated embeddings request as what it asks of a worker: the one place ``EmbedTask`` and ``EmbedChunk`` fields
are built from a request, whichever way it came in (``/v1/embeddings``, a job, a line of a batch)."""

from __future__ import annotations

import dataclasses
from typing import Any

from api.embeddings.schemas import EmbeddingRequest
from shared.protocol import EmbedChunk, EmbedTask, EncodingFormat, InputKind, OutputDtype, Truncation
from shared.queue_format import chunk_request_id
from shared.settings import Settings


@dataclasses.dataclass(frozen=True, slots=True)
class EmbedOptions:
    """Everything a worker applies to a request's inputs; requests with equal options may share a chunk."""

    model: str
    input_kind: InputKind
    dimensions: int | None
    truncate: Truncation
    prompt_name: str | None
    input_type: str | None
    normalize: bool | None

    @classmethod
    def of(cls, request: EmbeddingRequest, settings: Settings) -> EmbedOptions:
        """The request's options, with the deployment's defaults filled in."""
        return cls(
            model=request.model,
            input_kind=request.input[0],
            dimensions=request.dimensions,
            truncate=default_truncation(settings) if request.truncate is None else request.truncate,
            prompt_name=request.prompt_name,
            input_type=request.input_type,
            normalize=request.normalize,
        )

    def sync_job(
        self,
        request_id: str,
        inputs: list[Any],
        encoding_format: EncodingFormat,
        output_dtype: OutputDtype,
        *,
        reply_to: str,
        enqueued_ms: int,
        deadline_ms: int,
    ) -> EmbedTask:
        """The job for a synchronous request (``api.dispatch`` gives the reply list and the deadline)."""
        return EmbedTask(
            **self._fields(),
            request_id=request_id,
            inputs=inputs,
            enqueued_ms=enqueued_ms,
            deadline_ms=deadline_ms,
            reply_to=reply_to,
            encoding_format=encoding_format,
            output_dtype=output_dtype,
        )

    def chunk_job(
        self,
        parent_job: str,
        chunk: int,
        inputs: list[Any],
        *,
        enqueued_ms: int,
        deadline_ms: int,
        parts: list[int] | None = None,
        results_expire_at_s: int = 0,
    ) -> EmbedChunk:
        """Chunk ``chunk`` of job or batch ``parent_job``; a batch's chunks say how many inputs each request has."""
        return EmbedChunk(
            **self._fields(),
            request_id=chunk_request_id(parent_job, chunk),
            inputs=inputs,
            enqueued_ms=enqueued_ms,
            deadline_ms=deadline_ms,
            parent_job=parent_job,
            chunk=chunk,
            parts=parts,
            results_expire_at_s=results_expire_at_s,
        )

    def _fields(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def default_truncation(settings: Settings) -> Truncation:
    """What an embedding request that does not say ``truncate`` gets: chunked (``CHUNK_LONG_INPUTS``), else cut or
    refused as ``TRUNCATE_INPUTS`` says."""
    return "chunk" if settings.chunk_long_inputs else settings.truncate_inputs

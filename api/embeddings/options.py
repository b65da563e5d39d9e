"""A validated embeddings request as what it asks of a worker: the one place ``EmbedTask`` and ``EmbedChunk`` fields
are built from a request, whichever way it came in (``/v1/embeddings``, a job, a line of a batch)."""

from __future__ import annotations

import dataclasses
from typing import Any

from api.embeddings.schemas import EmbeddingRequest
from shared.protocol import EmbedChunk, EmbedTask, EncodingFormat, InputKind, OutputDtype, Truncation
from shared.queue_format import chunk_request_id


@dataclasses.dataclass(frozen=True, slots=True)
class EmbedOptions:
    """Everything a worker applies to a request's inputs; requests with equal options may share a chunk."""

    model: str
    input_kind: InputKind
    dimensions: int | None
    #: None: the request did not say (the worker applies the deployment's default for the model's kind)
    truncate: Truncation | None
    prompt_name: str | None
    input_type: str | None
    normalize: bool | None

    @classmethod
    def of(cls, request: EmbeddingRequest) -> EmbedOptions:
        """The request's options, as it gave them (defaults are the worker's to apply: ``EmbedInputs``)."""
        return cls(
            model=request.model,
            input_kind=request.input[0],
            dimensions=request.dimensions,
            truncate=request.truncate,
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
        return {name: getattr(self, name) for name in _OPTION_FIELDS}


#: read once: ``dataclasses.fields`` walks the class's fields every call, and this runs once a request
_OPTION_FIELDS = tuple(field.name for field in dataclasses.fields(EmbedOptions))

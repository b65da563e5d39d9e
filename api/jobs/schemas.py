"""``/v1/embeddings/jobs``: the request (the embeddings request, with a larger input limit and metadata) and the
job object's shape, for the OpenAPI document (responses are built as dicts, ``api.jobs.routes``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from api.embeddings.schemas import EmbeddingRequest, Usage, served
from api.http import parse_body
from shared.settings import Settings


class JobRequest(EmbeddingRequest):
    """``POST /v1/embeddings/jobs``: the embeddings request, with a larger input limit and metadata."""

    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        None, max_length=16, description="Up to 16 string pairs (keys up to 64 characters), returned with the job."
    )


def parse_job_request(payload: Any, settings: Settings) -> JobRequest:
    context = {"settings": settings, "max_inputs": settings.max_job_inputs}
    return served(parse_body(JobRequest, payload, context), settings)


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class JobObject(BaseModel):
    id: str
    object: Literal["embedding.job"]
    status: Literal["queued", "in_progress", "completed", "failed", "cancelled", "expired"]
    model: str
    created_at: int
    completed_at: int | None
    expires_at: int
    request_counts: RequestCounts
    usage: Usage
    error: dict[str, str] | None
    errors: list[dict[str, Any]]
    metadata: dict[str, str]


class DeletedJob(BaseModel):
    id: str
    object: Literal["embedding.job.deleted"]
    deleted: bool

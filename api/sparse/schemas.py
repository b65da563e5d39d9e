"""TEI's ``/embed_sparse`` request, validated with the deployment's limits (``{"settings": Settings}`` in the
validation context, as for embeddings), and the shapes of sparse answers, for the OpenAPI document.

``model`` is ours: TEI serves one model, so its clients name none. Here it may be left out only where the
deployment serves exactly one model, as on TEI's other routes (``api.tokenize.schemas.sole_model``).
``input_type`` is ours too (TEI has no query/document switch): ``query`` encodes as ``encode_query``,
``document`` as ``encode_document``; without it, as ``encode``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from api.embeddings.schemas import normalize_input
from api.http import PromptName
from api.tokenize.schemas import InputsSchema, sole_model
from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings


class EmbedSparseRequest(BaseModel):
    """TEI's sparse embedding request, and ``model`` and ``input_type``."""

    model_config = ConfigDict(extra="forbid")

    inputs: Any = Field(description="A string or a list of strings.")
    truncate: StrictBool | None = Field(
        None, description="Cut inputs longer than the model reads (default: the deployment's setting) or refuse them."
    )
    truncation_direction: Literal["Right", "right"] = Field(
        "Right", description="Only `Right` (the end is cut), as sentence-transformers cuts."
    )
    prompt_name: PromptName | None = Field(
        None,
        description="The model's prompt to put before each text, by name (a key of its `prompts`).",
    )
    input_type: Literal["query", "document"] | None = Field(
        None,
        description="(extension) `query` encodes as `SparseEncoder.encode_query` (its query prompt, and an "
        "inference-free model's query route), `document` as `encode_document`; without it, as `encode`.",
    )
    model: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="A sparse model. May be left out only where this deployment serves exactly one model, as TEI does.",
    )

    @field_validator("inputs", mode="plain", json_schema_input_type=InputsSchema)
    @classmethod
    def _check_inputs(cls, value: Any, info: ValidationInfo) -> list[str]:
        settings: Settings = (info.context or {})["settings"]
        if not isinstance(value, str) and not (isinstance(value, list) and value and isinstance(value[0], str)):
            raise PydanticCustomError("invalid_input", "inputs must be a string or a list of strings")
        kind, texts = normalize_input(value, settings, settings.max_inputs_per_request)
        if kind != "text":
            raise PydanticCustomError("invalid_input", "inputs must be a string or a list of strings")
        return texts


def sparse_model(request: EmbedSparseRequest, settings: Settings) -> str:
    """The model it names, else the deployment's only one; a 400 where there is none to default to."""
    model = request.model or sole_model(settings)
    if model is None:
        raise ServiceError(
            ErrorKind.INVALID_REQUEST, "model is required: this deployment serves more than one model", "model"
        )
    return model


# Response shapes, for the OpenAPI document (responses are rendered by the worker, not through these models).


class SparseValue(BaseModel):
    """A nonzero value of a sparse vector and its index in the model's vocabulary."""

    index: int
    value: float

"""vLLM's pooling request (the ``token_embed`` task, text input) and TEI's ``embed_all`` request, and their answers'
shapes for the OpenAPI document (answers are rendered by the worker and framed with orjson, not through these)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from api.http import PromptName
from shared.settings import Settings

_Text = Annotated[str, Field(min_length=1)]
#: what ``input`` / ``inputs`` accepts, as the OpenAPI schema shows it (the limits depend on the deployment)
TextsSchema = _Text | Annotated[list[_Text], Field(min_length=1)]

_INPUT_TYPE = (
    "`query` encodes as the model's `encode_query` (its query prompt or marker, queries padded with [MASK] to the "
    "model's query length), `document` as `encode_document` (its document prompt, its skiplist of punctuation left "
    "out); neither: as `encode`."
)


def check_texts(value: Any, info: ValidationInfo, field: str) -> list[str]:
    """A string or a non-empty list of non-empty strings, within the deployment's limits."""
    settings: Settings = (info.context or {})["settings"]
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise _invalid(f"{field} must be a string or a list of strings (token ids are not taken here)")
    if not texts:
        raise _invalid(f"{field} must not be empty")
    if len(texts) > settings.max_inputs_per_request:
        raise _invalid(f"{field} has {len(texts)} items; at most {settings.max_inputs_per_request} are allowed")
    for text in texts:
        if not text:
            raise _invalid(f"{field} must not contain empty strings")
        if len(text) > settings.max_input_chars:
            raise _invalid(f"an input has {len(text)} characters; at most {settings.max_input_chars} are allowed")
    return texts


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_input", message)


class PoolingRequest(BaseModel):
    """vLLM's pooling request, for a multi-vector model: one vector per token of each text."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    input: Any = Field(description="A string or a list of strings.")
    task: Literal["token_embed"] = Field(
        "token_embed", description="vLLM's pooling task; `token_embed` (one vector per token) is the one served."
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float",
        description="`base64`: each input's (tokens x dimensions) float32 values, little-endian, row by row (token "
        "after token), base64-encoded.",
    )
    embedding_mode: Literal["query", "document"] | None = Field(None, description="vLLM's name for `input_type`.")
    input_type: Literal["query", "document"] | None = Field(None, description=_INPUT_TYPE)
    prompt_name: PromptName | None = Field(None, description="A key of the model's prompts.")
    truncate: StrictBool | None = Field(
        None, description="`false` refuses a text longer than the model reads (default: the deployment's)."
    )
    user: str | None = Field(None, max_length=256, description="Accepted and ignored, as by vLLM.")

    @field_validator("input", mode="plain", json_schema_input_type=TextsSchema)
    @classmethod
    def _check_input(cls, value: Any, info: ValidationInfo) -> list[str]:
        return check_texts(value, info, "input")

    @property
    def texts(self) -> list[str]:
        texts: list[str] = self.input
        return texts

    @model_validator(mode="after")
    def _check_mode(self) -> PoolingRequest:
        if self.embedding_mode is not None and self.input_type is not None and self.embedding_mode != self.input_type:
            raise _invalid("embedding_mode and input_type disagree")
        return self

    @property
    def mode(self) -> str | None:
        return self.input_type or self.embedding_mode


class EmbedAllRequest(BaseModel):
    """TEI's ``embed_all`` request, and ``model`` and ``input_type``."""

    model_config = ConfigDict(extra="forbid")

    inputs: Any = Field(description="A string or a list of strings.")
    truncate: StrictBool | None = Field(
        None, description="`false` refuses a text longer than the model reads (default: the deployment's)."
    )
    truncation_direction: Literal["Right", "right"] = "Right"
    prompt_name: PromptName | None = Field(None, description="A key of the model's prompts.")
    input_type: Literal["query", "document"] | None = Field(None, description=_INPUT_TYPE)
    model: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="May be left out only where this deployment serves exactly one model, as TEI does.",
    )

    @field_validator("inputs", mode="plain", json_schema_input_type=TextsSchema)
    @classmethod
    def _check_inputs(cls, value: Any, info: ValidationInfo) -> list[str]:
        return check_texts(value, info, "inputs")

    @property
    def texts(self) -> list[str]:
        texts: list[str] = self.inputs
        return texts


class PoolingItem(BaseModel):
    index: int
    object: Literal["pooling"]
    data: list[list[float]] | str


class PoolingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int


class PoolingResponse(BaseModel):
    id: str
    object: Literal["list"]
    created: int
    model: str
    data: list[PoolingItem]
    usage: PoolingUsage

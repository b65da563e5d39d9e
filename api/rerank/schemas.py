"""Rerank requests in the two shapes clients send: Cohere's and Jina's (``/v1/rerank``, ``/v2/rerank``, what the
``cohere`` client and vLLM speak) and TEI's (``/rerank``). Both become one ``RerankTask``; limits come in through
the validation context (``{"settings": Settings}``), as for embeddings."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from api.http import PositiveInt
from shared.settings import Settings

_Query = Annotated[str, Field(min_length=1)]


class TextDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str


class RerankRequest(BaseModel):
    """Cohere's and Jina's rerank request."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    query: _Query
    documents: list[str | TextDocument] = Field(
        description="Strings, or objects with a `text`.", json_schema_extra={"minItems": 1}
    )
    top_n: PositiveInt | None = Field(None, description="Return the best `top_n` (default: all).")
    return_documents: StrictBool = Field(False, description="Put each document's text in its result.")
    max_tokens_per_doc: PositiveInt | None = Field(
        None, description="Cut each document to this many tokens before pairing it with the query."
    )
    raw_scores: StrictBool = Field(
        False, description="The model's logits instead of its activation of them (as Infinity's `raw_scores`)."
    )

    @field_validator("documents")
    @classmethod
    def _check_documents(cls, value: list[str | TextDocument], info: ValidationInfo) -> list[str | TextDocument]:
        check_documents([item if isinstance(item, str) else item.text for item in value], info)
        return value

    def texts(self) -> list[str]:
        return [item if isinstance(item, str) else item.text for item in self.documents]


class TeiRerankRequest(BaseModel):
    """TEI's rerank request; ``model`` is ours (TEI serves one model): without it, ``DEFAULT_RERANK_MODEL``."""

    model_config = ConfigDict(extra="forbid")

    query: _Query
    texts: list[str] = Field(json_schema_extra={"minItems": 1})
    model: str | None = Field(None, min_length=1, max_length=256)
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool | None = Field(
        None, description="Cut pairs the model cannot read whole (default: the deployment's)."
    )
    truncation_direction: Literal["Right", "right"] = "Right"

    @field_validator("texts")
    @classmethod
    def _check_texts(cls, value: list[str], info: ValidationInfo) -> list[str]:
        check_documents(value, info)
        return value


def check_documents(texts: list[str], info: ValidationInfo) -> None:
    settings: Settings = (info.context or {})["settings"]
    if not texts:
        raise PydanticCustomError("invalid_input", "documents must not be empty")
    if len(texts) > settings.max_rerank_documents:
        raise PydanticCustomError(
            "invalid_input", f"there are {len(texts)} documents; at most {settings.max_rerank_documents} are allowed"
        )
    for text in texts:
        if len(text) > settings.max_input_chars:
            raise PydanticCustomError(
                "invalid_input",
                f"a document has {len(text)} characters; at most {settings.max_input_chars} are allowed",
            )


# Response shapes, for the OpenAPI document (responses are built with orjson, not through these models).


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: TextDocument | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage
    meta: dict[str, Any]


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None

"""The OpenAI embeddings request, validated with the deployment's limits.

Limits come in through the validation context (``{"settings": Settings}``), so one model serves any deployment.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from api.embeddings.content import content_inputs, image_input
from api.http import Dimensions, PromptName, json_integer, parse_body
from shared.errors import ErrorKind, ServiceError
from shared.protocol import OUTPUT_DTYPES, InputKind, OutputDtype
from shared.quantize import UNOFFERED, unoffered
from shared.settings import Settings
from shared.token_ids import MAX_TOKEN_ID, admitted

#: the mark on a token id's schema, which ``api.openapi`` replaces with the bounds ``TOKEN_IDS`` gives
TOKEN_ID_MARK = "x-token-id"


class _NamesModel(Protocol):
    @property
    def model(self) -> str: ...


Request = TypeVar("Request", bound=_NamesModel)

_Text = Annotated[str, Field(min_length=1)]
_Url = Annotated[str, Field(min_length=1, description="a data URI (data:image/png;base64,...) or an http(s) URL")]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: _Text


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: _Url
    detail: str | None = Field(None, description="OpenAI's; ignored")


class ImagePart(BaseModel):
    """An image, for a model that takes images (its card's ``modalities``): vLLM's chat-content part."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["image_url"]
    image_url: ImageUrl


_TokenId = Annotated[int, Field(ge=0, json_schema_extra={TOKEN_ID_MARK: True})]
#: what ``input`` accepts, as the OpenAPI schema shows it (the item limits depend on the deployment)
InputSchema = (
    _Text
    | Annotated[list[_Text], Field(min_length=1)]
    | Annotated[list[_TokenId], Field(min_length=1)]
    | Annotated[list[Annotated[list[_TokenId], Field(min_length=1)]], Field(min_length=1)]
    | Annotated[list[_Text | TextPart | ImagePart], Field(min_length=1)]
)


#: with ``modality: "image"``, ``input`` is a string or strings: each an image
_IMAGES_ARE_STRINGS: JsonDict = {
    "if": {"properties": {"modality": {"const": "image"}}, "required": ["modality"]},
    "then": {
        "properties": {
            "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}
        }
    },
}


class EmbeddingRequest(BaseModel):
    #: a misspelt option must not silently change what a client gets (OpenAI answers 400 to an unknown argument)
    model_config = ConfigDict(extra="forbid", json_schema_extra=_IMAGES_ARE_STRINGS)

    # before ``input``, which is read as images when it says so
    modality: Literal["text", "image"] | None = Field(
        None,
        description="(Infinity's) `image`: each string of `input` is an image, a data URI or a URL, for a model that "
        "takes images.",
    )
    input: Any = Field(
        description="A string, a list of strings, a list of token ids, or a list of token-id lists; for a model that "
        "takes images, a list of strings and content parts (`{type: text, text}`, `{type: image_url, image_url: "
        "{url}}`), one vector each."
    )
    model: str = Field(
        min_length=1,
        max_length=256,
        description="An embedding model; a sparse model (SPLADE) answers `sparse_embedding` items (`indices`, "
        "`values`) instead, whatever the `encoding_format`.",
    )
    encoding_format: Literal["float", "base64"] = "float"
    output_dtype: OutputDtype = Field(
        "float",
        description="Each value as a float, or as one sign bit packed eight to a byte: `binary` (int8, as "
        "sentence-transformers' `quantize_embeddings`), `ubinary` (uint8). Bits come as JSON integers, or as "
        "base64 of their bytes with `encoding_format: base64`.",
    )
    dimensions: Dimensions | None = None
    user: str | None = None
    truncate: StrictBool | Literal["chunk"] | None = Field(
        None,
        description="An input longer than the model reads: cut it (true), refuse it (false), or split it into chunks "
        "at the model's maximum length and average their vectors weighted by their tokens (`chunk`, as vLLM's "
        "chunked processing). Default: the deployment's setting.",
    )
    prompt_name: PromptName | None = Field(
        None,
        description="The model's prompt to put before each text, by name (a key of its `prompts`).",
    )
    input_type: Literal["query", "document"] | None = Field(
        None,
        description="The model's `query` or `document` prompt, as sentence-transformers' `encode_query` / "
        "`encode_document` pick it. With neither this nor `prompt_name`, the model's default prompt applies.",
    )
    normalize: StrictBool | None = Field(
        None, description="Unit-length vectors (true) or raw ones (false); default: as the model gives them."
    )

    @field_validator("truncate", mode="before")
    @classmethod
    def _check_truncate(cls, value: Any) -> Any:
        if type(value) is int or value not in (None, True, False, "chunk"):
            raise PydanticCustomError("invalid_input", 'truncate must be true, false or "chunk"')
        return value

    @field_validator("output_dtype", mode="before")
    @classmethod
    def _check_output_dtype(cls, value: Any) -> Any:
        if value in UNOFFERED:
            raise PydanticCustomError("invalid_input", f"output_dtype {unoffered(value)}; use float, binary or ubinary")
        if value not in OUTPUT_DTYPES:
            raise PydanticCustomError("invalid_input", "output_dtype must be one of float, binary, ubinary")
        return value

    @field_validator("input", mode="plain", json_schema_input_type=InputSchema)
    @classmethod
    def _check_input(cls, value: Any, info: ValidationInfo) -> tuple[InputKind, list[Any]]:
        context = info.context or {}
        settings: Settings = context["settings"]
        max_inputs = context.get("max_inputs", settings.max_inputs_per_request)
        if info.data.get("modality") == "image":
            return image_inputs(value, settings, max_inputs)
        return normalize_input(value, settings, max_inputs)


def image_inputs(value: Any, settings: Settings, max_inputs: int) -> tuple[InputKind, list[Any]]:
    """``modality: "image"``: a string or a list of strings, each an image."""
    sources = [value] if isinstance(value, str) else value
    if not isinstance(sources, list) or not sources or not all(isinstance(item, str) for item in sources):
        raise _invalid("with modality image, input must be a string or a list of strings, each a data URI or URL")
    if len(sources) > max_inputs:
        raise _invalid(f"input has {len(sources)} items; at most {max_inputs} are allowed")
    return "mixed", [image_input(source, settings) for source in sources]


def normalize_input(value: Any, settings: Settings, max_inputs: int) -> tuple[InputKind, list[Any]]:
    """``("text", [str, ...])`` or ``("tokens", [[int, ...], ...])``, or a PydanticCustomError that says why not."""
    if isinstance(value, str):
        return "text", [_check_text(value, settings)]
    if not isinstance(value, list):
        raise _invalid("input must be a string, a list of strings, or a list of token ids")
    if not value:
        raise _invalid("input must not be empty")
    first = value[0]
    if _is_number(first):  # one input, as token ids
        return "tokens", _check_token_lists([value], settings)
    if len(value) > max_inputs:
        raise _invalid(f"input has {len(value)} items; at most {max_inputs} are allowed")
    if any(isinstance(item, dict) for item in value):
        return content_inputs(value, _check_text, settings)
    if isinstance(first, str):
        if not all(isinstance(item, str) for item in value):
            raise _invalid("input must not mix strings with other types")
        return "text", [_check_text(item, settings) for item in value]
    if isinstance(first, list):
        if not all(isinstance(item, list) for item in value):
            raise _invalid("input must not mix token-id lists with other types")
        return "tokens", _check_token_lists(value, settings)
    raise _invalid("input must be a string, a list of strings, or a list of token ids")


def _check_text(text: str, settings: Settings) -> str:
    if not text:
        raise _invalid("input must not contain empty strings")
    if len(text) > settings.max_input_chars:
        raise _invalid(f"an input has {len(text)} characters; at most {settings.max_input_chars} are allowed")
    return text


def _check_token_lists(lists: list[list[Any]], settings: Settings) -> list[list[int]]:
    """Token-id lists are bounded by the request's token limit, as the model's own tokens are (by the worker)."""
    total = sum(map(len, lists))
    if total > settings.max_tokens_per_request:
        raise _invalid(
            f"input has {total} tokens; at most {settings.max_tokens_per_request} are allowed in one request"
        )
    checked: list[list[int]] = []
    for tokens in lists:
        if not tokens:
            raise _invalid("input must not contain empty token lists")
        ids = [json_integer(token) if _is_number(token) else token for token in tokens]
        if not all(type(token) is int and token >= 0 for token in ids):
            raise _invalid("token ids must be non-negative integers")
        if not all(admitted(token, settings.token_ids) for token in ids):
            if settings.token_ids == "openai":
                raise _invalid(
                    "a token id is not in OpenAI's cl100k_base vocabulary; this server reads token ids as "
                    "cl100k_base ids (TOKEN_IDS=openai)"
                )
            raise _invalid(f"a token id is above {MAX_TOKEN_ID}, more than any tokenizer holds")
        checked.append(ids)
    return checked


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)  # bool is an int subclass; true/false are not token ids


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_input", message)


def parse_embedding_request(payload: Any, settings: Settings) -> EmbeddingRequest:
    """Validate a decoded JSON body; any problem becomes a 400 naming the offending field, and a model this
    deployment does not serve a 404."""
    return served(parse_body(EmbeddingRequest, payload, {"settings": settings}), settings)


def served(request: Request, settings: Settings) -> Request:
    require_served(request.model, settings)
    return request


def require_served(model: str, settings: Settings) -> None:
    """A 404 for a model this deployment does not serve."""
    if not settings.model_allowed(model):
        raise ServiceError(ErrorKind.MODEL_NOT_FOUND, f"model {model!r} is not served here", "model")


# Response shapes, for the OpenAPI document (responses are built with orjson, not through these models).


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingItem(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of float32 little-endian bytes")


class SparseEmbeddingItem(BaseModel):
    """(extension) The item for a sparse model (SPLADE): the input's nonzero values by ascending index, the
    ``indices`` / ``values`` pair Qdrant's and Milvus' sparse vectors take as they are."""

    object: Literal["sparse_embedding"]
    index: int
    indices: list[int]
    values: list[float]


class EmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[EmbeddingItem | SparseEmbeddingItem]
    model: str
    usage: Usage

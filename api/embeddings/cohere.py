"""``POST /v2/embed``: the embeddings request in Cohere's shape, as the ``cohere`` client's ``embed`` sends it.

It runs as an OpenAI embeddings request would (``EmbedOptions``): ``input_type`` picks the model's query or
document prompt, ``output_dimension`` cuts (and re-normalizes where the model normalizes), ``truncate`` END cuts and
NONE refuses a text the model cannot read whole. For a model that takes images, ``images`` (data URIs) and ``inputs``
(each ``{"content": [one text or image_url part]}``) take the place of ``texts`` (``api.embeddings.content``). The
worker answers float32 vectors; each of ``embedding_types`` is
rendered from them here: ``float``, ``binary`` and ``ubinary`` (``shared.quantize``), ``base64`` (of the float32
little-endian bytes, as OpenAI's). ``int8`` and ``uint8`` are refused, as ``output_dtype`` does.
"""

from __future__ import annotations

import base64
import functools
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from api.dispatch import JobBuilder
from api.embeddings.content import content_inputs, image_input, invalid
from api.embeddings.options import EmbedOptions
from api.embeddings.schemas import ImagePart, TextPart, normalize_input
from api.fast_route import json_post
from api.http import Dimensions
from api.sync_route import SyncRoute
from shared.errors import ErrorKind, ServiceError
from shared.kinds import wrong_kind_message
from shared.protocol import InputKind, TaskReply
from shared.quantize import UNOFFERED, quantize, unoffered
from shared.settings import Settings

EmbeddingType = Literal["float", "binary", "ubinary", "base64"]
#: Cohere's input types, as the prompts sentence-transformers' ``encode_query`` / ``encode_document`` pick
_PROMPT_OF_INPUT_TYPE = {
    "search_query": "query",
    "search_document": "document",
    "classification": None,
    "clustering": None,
    "image": None,
}


class CohereInput(BaseModel):
    """One input of ``inputs``: its content, one text or one image (a CLIP-style model embeds either alone)."""

    model_config = ConfigDict(extra="forbid")

    content: list[TextPart | ImagePart] = Field(min_length=1, max_length=1)


class CohereEmbedRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        # exactly one of them, as Cohere's API takes them
        json_schema_extra={"oneOf": [{"required": ["texts"]}, {"required": ["images"]}, {"required": ["inputs"]}]},
    )
    _embedded: tuple[InputKind, list[Any]] = PrivateAttr(("text", []))

    model: str = Field(min_length=1, max_length=256)
    # each may be left out, not sent as null: the schema says exactly one is sent
    texts: list[str] | SkipJsonSchema[None] = Field(
        None, description="The texts to embed.", json_schema_extra={"minItems": 1}
    )
    images: list[str] | SkipJsonSchema[None] = Field(
        None,
        description="Images to embed, as data URIs (or URLs from hosts the deployment allows), for a model that takes "
        "images.",
        json_schema_extra={"minItems": 1},
    )
    inputs: list[CohereInput] | SkipJsonSchema[None] = Field(
        None, description="Texts and images, one content part each.", json_schema_extra={"minItems": 1}
    )
    input_type: Literal["search_document", "search_query", "classification", "clustering", "image"] | None = Field(
        None, description="`search_query` and `search_document` apply the model's query or document prompt."
    )
    embedding_types: list[EmbeddingType] = Field(["float"], min_length=1)
    output_dimension: Dimensions | None = None
    truncate: Literal["NONE", "END"] | None = Field(None, description="Default: the deployment's setting.")

    @field_validator("texts", mode="plain", json_schema_input_type=list[Annotated[str, Field(min_length=1)]])
    @classmethod
    def _check_texts(cls, value: Any, info: ValidationInfo) -> list[str] | None:
        settings: Settings = (info.context or {})["settings"]
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
            raise PydanticCustomError("invalid_input", "texts must be a list of strings")
        texts: list[str] = normalize_input(value, settings, settings.max_inputs_per_request)[1]
        return texts

    @field_validator("images", mode="plain", json_schema_input_type=list[Annotated[str, Field(min_length=1)]])
    @classmethod
    def _check_images(cls, value: Any, info: ValidationInfo) -> list[dict[str, str]] | None:
        settings: Settings = (info.context or {})["settings"]
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            raise invalid("images must be a non-empty list of data URIs")
        if len(value) > settings.max_inputs_per_request:
            raise invalid(f"images has {len(value)} items; at most {settings.max_inputs_per_request} are allowed")
        return [image_input(image, settings) for image in value]

    @model_validator(mode="after")
    def _one_kind_of_input(self, info: ValidationInfo) -> CohereEmbedRequest:
        settings: Settings = (info.context or {})["settings"]
        given = [name for name in ("texts", "images", "inputs") if getattr(self, name) is not None]
        if len(given) != 1:
            raise invalid("send exactly one of texts, images and inputs")
        if self.texts is not None:
            self._embedded = ("text", self.texts)
        elif self.images is not None:
            self._embedded = ("mixed", self.images)
        else:
            parts = [item.content[0].model_dump() for item in self.inputs or ()]
            if len(parts) > settings.max_inputs_per_request:
                raise invalid(f"inputs has {len(parts)} items; at most {settings.max_inputs_per_request} are allowed")
            self._embedded = content_inputs(parts, _text_within_limits, settings)
        return self

    def embed_inputs(self) -> tuple[InputKind, list[Any]]:
        """What to embed, as an ``EmbedTask``'s ``input_kind`` and ``inputs``."""
        return self._embedded

    @field_validator("embedding_types", mode="before")
    @classmethod
    def _check_types(cls, value: Any) -> Any:
        for name in value if isinstance(value, list) else []:
            if name in UNOFFERED:
                message = f"embedding type {unoffered(name)}; use float, binary, ubinary or base64"
                raise PydanticCustomError("invalid_input", message)
        return value

    @field_validator("truncate", mode="before")
    @classmethod
    def _check_truncate(cls, value: Any) -> Any:
        if value == "START":
            raise PydanticCustomError("invalid_input", "truncate START is not supported; use END or NONE")
        return value


def _text_within_limits(text: str, settings: Settings) -> str:
    texts: list[str] = normalize_input([text], settings, 1)[1]
    return texts[0]


def _task(request: CohereEmbedRequest, request_id: str, settings: Settings) -> JobBuilder:
    input_kind, inputs = request.embed_inputs()
    options = EmbedOptions(
        model=request.model,
        input_kind=input_kind,
        dimensions=request.output_dimension,
        truncate=None if request.truncate is None else request.truncate == "END",
        prompt_name=None,
        input_type=_PROMPT_OF_INPUT_TYPE[request.input_type] if request.input_type else None,
        normalize=None,
    )
    return functools.partial(options.sync_job, request_id, inputs, "base64", "float")


def _render(request: CohereEmbedRequest, reply: TaskReply, request_id: str) -> bytes:
    items = orjson.loads(reply.data)
    if items and items[0].get("object") == "sparse_embedding":  # a sparse model answers sparse items: not Cohere's
        message = wrong_kind_message(request.model, "sparse", ("embedding",))
        raise ServiceError(ErrorKind.INVALID_REQUEST, message, "model")
    vectors = np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in items])
    body = {
        "id": request_id,
        "response_type": "embeddings_by_type",
        "embeddings": {name: _rendered(vectors, name) for name in dict.fromkeys(request.embedding_types)},
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": reply.prompt_tokens}},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _rendered(vectors: np.ndarray, name: EmbeddingType) -> Any:
    if name == "base64":
        return [base64.b64encode(row.tobytes()).decode() for row in vectors]
    return quantize(vectors, name)


class CohereEmbeddings(BaseModel):
    float_: list[list[float]] | None = Field(None, alias="float")
    binary: list[list[int]] | None = None
    ubinary: list[list[int]] | None = None
    base64: list[str] | None = None


class CohereEmbedResponse(BaseModel):
    id: str
    response_type: Literal["embeddings_by_type"]
    embeddings: CohereEmbeddings
    meta: dict[str, Any]


EMBED = SyncRoute(
    "/v2/embed", "cohere_embed", request=CohereEmbedRequest, response=CohereEmbedResponse, task=_task, render=_render
)

ROUTE = json_post(EMBED)

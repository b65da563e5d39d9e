"""TEI's ``/tokenize`` and ``/decode`` requests, validated with the deployment's limits (``{"settings": Settings}``
in the validation context, as for embeddings): at most ``MAX_INPUTS_PER_REQUEST`` texts or id lists, each text at
most ``MAX_INPUT_CHARS`` characters, at most ``MAX_TOKENS_PER_REQUEST`` ids in a decode (a tokenize's tokens are
counted by the worker, which has the tokenizer).

``model`` is ours: TEI serves one model, so its clients name none. Here it may be left out only where the
deployment serves exactly one model (``sole_model``), as TEI does; else it is required, as on ``/v1/embeddings``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from api.http import PromptName, json_integer
from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings
from shared.token_ids import MAX_TOKEN_ID

_Text = Annotated[str, Field(min_length=1)]
_TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
#: what ``inputs`` accepts, as the OpenAPI schema shows it (the limits depend on the deployment)
InputsSchema = _Text | Annotated[list[_Text], Field(min_length=1)]
#: what ``ids`` accepts: one id list (not empty) or a list of them
IdsSchema = Annotated[list[_TokenId], Field(min_length=1)] | Annotated[list[list[_TokenId]], Field(min_length=1)]

_MODEL_DESCRIPTION = (
    "The model whose tokenizer answers. May be left out only where this deployment serves exactly one model, "
    "as TEI does."
)


class TokenizeRequest(BaseModel):
    """TEI's tokenize request, and ``model`` and ``truncate``."""

    model_config = ConfigDict(extra="forbid")

    inputs: Any = Field(description="A string or a list of strings.")
    add_special_tokens: StrictBool = Field(True, description="Put the model's special tokens around each text.")
    prompt_name: PromptName | None = Field(
        None,
        description="The model's prompt to put before each text, by name (a key of its `prompts`); without it, "
        "the model's default prompt, as for an embedding. Its tokens are answered too.",
    )
    model: str | None = Field(None, min_length=1, max_length=256, description=_MODEL_DESCRIPTION)
    truncate: StrictBool = Field(
        False,
        description="Only the tokens the model reads (each text cut to its maximum length, as an embedding with "
        "`truncate` is cut); default: every token, as TEI answers.",
    )

    @field_validator("inputs", mode="plain", json_schema_input_type=InputsSchema)
    @classmethod
    def _check_inputs(cls, value: Any, info: ValidationInfo) -> list[str]:
        settings: Settings = (info.context or {})["settings"]
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list):
            raise _invalid("inputs must be a string or a list of strings")
        if not texts:
            raise _invalid("inputs must not be empty")
        if len(texts) > settings.max_inputs_per_request:
            raise _invalid(f"inputs has {len(texts)} items; at most {settings.max_inputs_per_request} are allowed")
        for text in texts:
            if not isinstance(text, str):
                raise _invalid("inputs must be a string or a list of strings")
            if not text:
                raise _invalid("inputs must not contain empty strings")
            if len(text) > settings.max_input_chars:
                raise _invalid(f"an input has {len(text)} characters; at most {settings.max_input_chars} are allowed")
        return texts


class DecodeRequest(BaseModel):
    """TEI's decode request, and ``model``."""

    model_config = ConfigDict(extra="forbid")

    ids: Any = Field(description="Token ids of the model's vocabulary: one list, or a list of lists.")
    skip_special_tokens: StrictBool = Field(True, description="Leave the model's special tokens out of the text.")
    model: str | None = Field(None, min_length=1, max_length=256, description=_MODEL_DESCRIPTION)

    @field_validator("ids", mode="plain", json_schema_input_type=IdsSchema)
    @classmethod
    def _check_ids(cls, value: Any, info: ValidationInfo) -> list[list[int]]:
        settings: Settings = (info.context or {})["settings"]
        if not isinstance(value, list):
            raise _invalid("ids must be a list of token ids or a list of token-id lists")
        if not value:
            raise _invalid("ids must not be empty")
        lists = [value] if _is_number(value[0]) else value
        if len(lists) > settings.max_inputs_per_request:
            raise _invalid(f"ids has {len(lists)} lists; at most {settings.max_inputs_per_request} are allowed")
        if not all(isinstance(ids, list) for ids in lists):
            raise _invalid("ids must be a list of token ids or a list of token-id lists")
        total = sum(map(len, lists))
        if total > settings.max_tokens_per_request:
            raise _invalid(f"ids has {total} ids; at most {settings.max_tokens_per_request} are allowed in one request")
        checked = []
        for ids in lists:
            tokens = [json_integer(token) if _is_number(token) else token for token in ids]
            if not all(type(token) is int and 0 <= token <= MAX_TOKEN_ID for token in tokens):
                raise _invalid(f"token ids must be integers from 0 to {MAX_TOKEN_ID}")
            checked.append(tokens)
        return checked


def sole_model(settings: Settings) -> str | None:
    """The one model this deployment serves, if it serves exactly one (and admits no other by name)."""
    if settings.allow_any_model:
        return None
    names = {*settings.embed_models, *settings.allowed_models, *settings.model_paths}
    if settings.default_rerank_model is not None:
        names.add(settings.default_rerank_model)
    return next(iter(names)) if len(names) == 1 else None


def requested_model(request: TokenizeRequest | DecodeRequest, settings: Settings) -> str:
    """The model it names, else the deployment's only one; a 400 where there is none to default to."""
    model = request.model or sole_model(settings)
    if model is None:
        raise ServiceError(
            ErrorKind.INVALID_REQUEST, "model is required: this deployment serves more than one model", "model"
        )
    return model


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)  # bool is an int subclass; true/false are not token ids


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_input", message)


# Response shapes, for the OpenAPI document (responses are rendered by the worker, not through these models).


class SimpleToken(BaseModel):
    """One token: a special token has no offsets; any other, its UTF-8 byte offsets into the prompted text."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None

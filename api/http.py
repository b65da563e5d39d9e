"""What every route shares: one body parser (its failure is the same 400 everywhere), one response builder, and
the path a request is routed on."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import orjson
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, Field, Strict, ValidationError
from starlette.types import Scope

from shared.errors import ErrorKind, ServiceError

Body = TypeVar("Body", bound=BaseModel)


def json_integer(value: Any) -> Any:
    """``value`` as an int where it is an integral float: JSON Schema counts ``3.0`` as an integer, as clients that
    write every number as a float do."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Integers as JSON Schema means them: ``3`` or ``3.0``, never ``"3"`` nor ``true``. The bounds come before the
# validator, so that the schema shows them as ``minimum`` and ``maximum``.
#: a count of at least one
PositiveInt = Annotated[int, Strict(), Field(ge=1), BeforeValidator(json_integer)]
#: a number of dimensions to keep
Dimensions = Annotated[int, Strict(), Field(ge=1, le=65_536), BeforeValidator(json_integer)]
#: a key of the model's ``prompts``, the prompt to put before each text (every route that takes one bounds it so)
PromptName = Annotated[str, Field(min_length=1, max_length=128)]


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ServiceError(ErrorKind.INVALID_REQUEST, "the request body is not valid JSON") from None


def json_response(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def parse_body(model: type[Body], payload: Any, context: dict[str, Any] | None = None) -> Body:
    """``payload`` (decoded JSON) as ``model``; any problem is a 400 naming the offending field."""
    if not isinstance(payload, dict):
        raise ServiceError(ErrorKind.INVALID_REQUEST, "the request body must be a JSON object")
    try:
        return model.model_validate(payload, context=context)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            message = f"unrecognized request argument supplied: {param}"
        elif first["type"] == "invalid_input":
            message = first["msg"]
        else:
            message = f"{param}: {first['msg']}"
        raise ServiceError(ErrorKind.INVALID_REQUEST, message, param) from None


def route_path(scope: Scope) -> str:
    """The path the app routes on: without the ``root_path`` a proxy mounted it under."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    return path[len(root_path) :] if root_path and path.startswith(root_path) else path

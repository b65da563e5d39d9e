"""JSON in and out for every route: one body parser (its failure is the same 400 everywhere), one response builder."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from shared.errors import ErrorKind, ServiceError

Body = TypeVar("Body", bound=BaseModel)


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

"""JSON in and out for every route: one body parser (its failure is the same 400 everywhere), one response builder."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

from shared.errors import ErrorKind, ServiceError


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ServiceError(ErrorKind.INVALID_REQUEST, "the request body is not valid JSON") from None


def json_response(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")

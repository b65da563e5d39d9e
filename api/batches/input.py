"""A batch's input file, read and checked line by line, as OpenAI's Batch API reads it.

Each line is ``{"custom_id", "method": "POST", "url": "/v1/embeddings", "body": {...}}``, the body any request
``POST /v1/embeddings`` takes. Problems of two kinds:

- the file's (not JSON, a duplicate ``custom_id``, another method or url, another model than the first line's, a
  model not served, over the limits): the batch fails validation, with errors naming the lines (``LineError``);
- a body the embeddings route would refuse (an empty input, a bad option): that request alone fails, with the
  error the route would give, into the batch's error file (``Line.error``), as OpenAI answers such lines.

Lines are read a file segment at a time; parsing runs in a thread so a large file does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import orjson

from api.embeddings.options import EmbedOptions
from api.embeddings.schemas import EmbeddingRequest, parse_embedding_request
from shared.errors import ServiceError
from shared.protocol import TaskError
from shared.settings import Settings

ENDPOINT = "/v1/embeddings"
#: validation errors reported at most (the count of the rest is reported too)
MAX_REPORTED_ERRORS = 100
MAX_CUSTOM_ID_CHARS = 512


@dataclasses.dataclass(frozen=True, slots=True)
class LineError:
    line: int
    code: str
    message: str
    param: str | None = None

    def as_object(self) -> dict[str, Any]:
        return {"code": self.code, "line": self.line, "message": self.message, "param": self.param}


@dataclasses.dataclass(frozen=True, slots=True)
class Line:
    """One request of the file: what to embed, or why the embeddings route would refuse it."""

    number: int
    custom_id: str
    model: str
    request: EmbeddingRequest | None = None
    error: TaskError | None = None

    @property
    def inputs(self) -> list[Any]:
        return [] if self.request is None else self.request.input[1]

    def options(self) -> EmbedOptions | None:
        """What the worker applies to its inputs; None for a request that already failed."""
        return None if self.request is None else EmbedOptions.of(self.request)


async def read_lines(segments: AsyncIterator[bytes], settings: Settings) -> AsyncIterator[list[Line | LineError]]:
    """The file's non-blank lines, parsed, a segment's worth at a time."""
    carry = b""
    number = 0
    async for segment in segments:
        pieces = (carry + segment).split(b"\n")
        carry = pieces.pop()
        if len(carry) > settings.max_body_bytes:
            yield [LineError(number + 1, "line_too_long", f"line {number + 1} is over {settings.max_body_bytes} bytes")]
            return
        first = number + 1
        number += len(pieces)
        yield await asyncio.to_thread(_parse_lines, pieces, first, settings)
    if carry.strip():
        yield _parse_lines([carry], number + 1, settings)


def _parse_lines(raw_lines: list[bytes], first: int, settings: Settings) -> list[Line | LineError]:
    return [_parse_line(raw, first + i, settings) for i, raw in enumerate(raw_lines) if raw.strip()]


def _parse_line(raw: bytes, number: int, settings: Settings) -> Line | LineError:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return LineError(number, "invalid_json_line", f"line {number} is not valid JSON")
    if not isinstance(line, dict):
        return LineError(number, "invalid_request", f"line {number} is not a JSON object")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID_CHARS:
        message = f"line {number}: custom_id must be a string of 1 to {MAX_CUSTOM_ID_CHARS} characters"
        return LineError(number, "invalid_request", message, "custom_id")
    if line.get("method") != "POST":
        return LineError(number, "invalid_request", f"line {number}: method must be POST", "method")
    if line.get("url") != ENDPOINT:
        message = f"line {number}: url must be {ENDPOINT}, the batch's endpoint"
        return LineError(number, "invalid_url", message, "url")
    body = line.get("body")
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str) or not model:
        message = f"line {number}: body must be a JSON object naming a model"
        return LineError(number, "invalid_request", message, "body.model")
    if not settings.model_allowed(model):
        message = f"line {number}: model {model!r} is not served here"
        return LineError(number, "model_not_found", message, "body.model")
    try:
        request = parse_embedding_request(body, settings)
    except ServiceError as exc:
        return Line(number, custom_id, model, error=TaskError(exc.kind, exc.message, exc.param))
    return Line(number, custom_id, model, request=request)


@dataclasses.dataclass(slots=True)
class Validation:
    """What the first read of a file found: the batch's size and model, and its errors (the first few)."""

    requests: int = 0
    inputs: int = 0
    model: str | None = None
    errors: list[LineError] = dataclasses.field(default_factory=list)
    error_count: int = 0
    #: each request's options and number of inputs (None: a request that already failed), what chunks are cut by
    shapes: list[tuple[EmbedOptions | None, int]] = dataclasses.field(default_factory=list)

    def fail(self, error: LineError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(error)


async def validate(segments: AsyncIterator[bytes], settings: Settings) -> Validation:
    found = Validation()
    custom_ids: set[str] = set()
    async for lines in read_lines(segments, settings):
        for line in lines:
            if isinstance(line, LineError):
                found.fail(line)
                continue
            found.requests += 1
            if found.requests == settings.max_batch_requests + 1:
                message = f"the file has more than {settings.max_batch_requests} requests"
                found.fail(LineError(line.number, "too_many_requests", message))
            if line.custom_id in custom_ids:
                message = f"line {line.number}: custom_id {line.custom_id!r} is used by an earlier line"
                found.fail(LineError(line.number, "duplicate_custom_id", message, "custom_id"))
            custom_ids.add(line.custom_id)
            if found.model is None:
                found.model = line.model
            elif line.model != found.model:
                message = f"line {line.number}: model {line.model!r} differs from the batch's model {found.model!r}"
                found.fail(LineError(line.number, "mismatched_model", message, "body.model"))
            before = found.inputs
            found.inputs += len(line.inputs)
            if before <= settings.max_batch_inputs < found.inputs:
                message = f"the batch has more than {settings.max_batch_inputs} inputs across its requests"
                found.fail(LineError(line.number, "too_many_inputs", message, "body.input"))
            if len(found.shapes) <= settings.max_batch_requests:
                found.shapes.append((line.options(), len(line.inputs)))
    if found.requests == 0 and not found.error_count:
        found.fail(LineError(0, "empty_file", "the input file has no requests"))
    return found

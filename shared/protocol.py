"""Wire protocol between the API and the workers: versioned msgpack messages, never pickle.

A job travels API -> worker as the single argument of an arq job; a result travels worker -> API on the
reply list named in the job. A synchronous request's result carries its OpenAI ``data`` array, rendered by the
worker; an asynchronous job's chunk carries its vectors as one block of float32 little-endian bytes, row after row.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import msgpack

from shared.errors import ErrorKind, ProtocolError

PROTOCOL_VERSION = 2

InputKind = Literal["text", "tokens"]
EncodingFormat = Literal["float", "base64"]


@dataclasses.dataclass(frozen=True, slots=True)
class EmbedJob:
    request_id: str
    model: str
    input_kind: InputKind
    #: texts when ``input_kind == "text"``, token-id lists when ``"tokens"``
    inputs: list[Any]
    dimensions: int | None
    truncate: bool
    reply_to: str
    enqueued_ms: int
    deadline_ms: int
    #: how the worker renders the vectors of a synchronous request ("float" or "base64")
    encoding_format: EncodingFormat = "float"
    #: set when this is one chunk of an asynchronous job: the job's id, and where the chunk starts
    job_id: str | None = None
    chunk: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class EmbedError:
    kind: ErrorKind
    message: str
    param: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class EmbedResult:
    request_id: str
    #: ``count * dim`` float32 little-endian values (asynchronous jobs' chunks)
    vectors: bytes = b""
    #: the OpenAI ``data`` array as JSON (synchronous requests)
    data: bytes = b""
    count: int = 0
    dim: int = 0
    prompt_tokens: int = 0
    error: EmbedError | None = None
    worker_id: str = ""
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    #: texts and requests in the largest batch that served this request
    batch_size: int = 0
    batch_requests: int = 0


_JOB_FIELDS = tuple(field.name for field in dataclasses.fields(EmbedJob))
_RESULT_FIELDS = tuple(field.name for field in dataclasses.fields(EmbedResult))


def _pack(message: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb({"v": PROTOCOL_VERSION, **message}, use_bin_type=True)
    return packed


def _unpack(data: bytes, what: str) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(f"{what} is not valid msgpack") from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"{what} is not a map")
    version = message.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"{what} has protocol version {version!r}, expected {PROTOCOL_VERSION}")
    return message


def _build(cls: type[Any], fields: dict[str, Any], what: str) -> Any:
    try:
        return cls(**fields)
    except TypeError as exc:
        raise ProtocolError(f"{what} has missing or unknown fields") from exc


def encode_job(job: EmbedJob) -> bytes:
    # built by hand: dataclasses.asdict deep-copies every input, and this runs once a request
    return _pack({field: getattr(job, field) for field in _JOB_FIELDS})


def decode_job(data: bytes) -> EmbedJob:
    job: EmbedJob = _build(EmbedJob, _unpack(data, "job"), "job")
    if job.input_kind not in ("text", "tokens") or not isinstance(job.inputs, list):
        raise ProtocolError("job has malformed inputs")
    if job.encoding_format not in ("float", "base64"):
        raise ProtocolError("job has an unknown encoding format")
    return job


def encode_result(result: EmbedResult) -> bytes:
    fields = {field: getattr(result, field) for field in _RESULT_FIELDS}
    if result.error is not None:
        fields["error"] = {
            "kind": result.error.kind.value,
            "message": result.error.message,
            "param": result.error.param,
        }
    return _pack(fields)


def decode_result(data: bytes) -> EmbedResult:
    fields = _unpack(data, "result")
    error = fields.get("error")
    if error is not None:
        try:
            fields["error"] = EmbedError(ErrorKind(error["kind"]), str(error["message"]), error.get("param"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError("result has a malformed error") from exc
    result: EmbedResult = _build(EmbedResult, fields, "result")
    if result.error is None and result.vectors and len(result.vectors) != result.count * result.dim * 4:
        raise ProtocolError("result vectors do not match count and dim")
    return result

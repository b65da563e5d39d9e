"""Wire protocol between the API and the workers: versioned msgpack messages, never pickle.

A *task* is what a client asks for: ``embed`` or ``rerank``. Each message is the single argument of an arq job
(every job names the arq function ``job_queue.TASK_FUNCTION``, whatever its task):

- ``EmbedTask`` (``keys.SYNC_QUEUE``): one synchronous embed request (``/v1/embeddings``, ``/v2/embed``). The
  worker answers it with one ``TaskReply`` pushed on the job's ``reply_to`` list; the reply carries the OpenAI
  ``data`` array already rendered (JSON floats, base64, packed bits), so the API only frames it.
- ``SparseEmbedTask`` (the same queue): TEI's ``/embed_sparse``, an ``EmbedTask`` that only a sparse model serves;
  its ``TaskReply`` carries TEI's answer. A sparse model answers an ``EmbedTask`` too (``sparse_embedding`` items).
- ``RerankTask`` (the same queue, leases and priorities): one rerank request, in any of its shapes. Its
  ``TaskReply`` carries the scores, one per document in order, as a JSON array; the API sorts and frames them.
- ``TokenizeTask`` and ``DecodeTask`` (the same queue): TEI's ``/tokenize`` and ``/decode``, answered from the
  model's own tokenizer with no forward pass (``worker.tokenizing``); the ``TaskReply`` carries TEI's answer.
- ``EmbedChunk`` (``keys.CHUNK_QUEUE``): one chunk of an asynchronous job or batch. No reply travels: the worker
  stores the chunk's float32 vectors and counts it into its parent's progress (``shared.chunks``), which the API
  reads when polled.

Both embed messages carry what to embed (``EmbedInputs``' fields); messages on the sync queue say their ``task``.
A synchronous task may carry its request's trace context (``trace_context``: the W3C ``traceparent`` and the other
headers the API's propagators write; ``shared.tracing``). Version 7: the arq function ``task`` and sync queue ids
that name their API key (``shared.job_queue.queue_job_id``); version 6: ``trace_context``; version 5: rerank tasks
and ``output_dtype``. Messages of another version are moved aside, not guessed at (``worker.dead_letter``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, TypeVar

import msgpack

from shared.errors import ErrorKind, ProtocolError

#: 10: an embedding job's ``truncate`` is None when its request did not say (the worker applies the deployment's
#: default for the model's kind); 9: image inputs (``input_kind`` ``mixed``) and ``truncate: "chunk"``; 8: a claimed
#: job's lease and attempts live in its queue score (``shared.job_queue``), not in arq's keys
PROTOCOL_VERSION = 10

#: ``mixed``: each input is a text (``str``) or an image (``{"image": <data URI or URL>}``, ``IMAGE_KEY``)
InputKind = Literal["text", "tokens", "mixed"]
INPUT_KINDS: tuple[InputKind, ...] = ("text", "tokens", "mixed")
#: the key of an image input of a ``mixed`` job
IMAGE_KEY = "image"
#: cut an over-long input to what the model reads (True), refuse it (False), or split it at the model's maximum
#: length and average its chunks' vectors, weighted by their tokens (``"chunk"``: ``worker.long_inputs``)
Truncation = bool | Literal["chunk"]
EncodingFormat = Literal["float", "base64"]
#: what each value of an embedding is: a float, or one sign bit of it, packed eight to a (signed or unsigned) byte
OutputDtype = Literal["float", "binary", "ubinary"]
OUTPUT_DTYPES: tuple[OutputDtype, ...] = ("float", "binary", "ubinary")

Job = TypeVar("Job", bound="EmbedInputs")
SyncTask = TypeVar("SyncTask", "EmbedTask", "RerankTask", "TokenizeTask", "DecodeTask", "TokenEmbedTask")


@dataclasses.dataclass(frozen=True, slots=True)
class EmbedInputs:
    """What to embed, and by when: the part an embed task and a chunk share."""

    request_id: str
    model: str
    input_kind: InputKind
    #: texts when ``input_kind == "text"``, token-id lists when ``"tokens"``, texts and images when ``"mixed"``
    inputs: list[Any]
    dimensions: int | None
    #: None: the request did not say; the worker applies the deployment's default for the model's kind
    #: (``worker.long_inputs.truncation``, ``unchunked``), so a sparse model tells the default from an explicit "chunk"
    truncate: Truncation | None
    #: the prompt to put before each text: by name, or by input type ("query" / "document"); neither: the default
    prompt_name: str | None
    input_type: str | None
    #: unit-length vectors or raw ones; None: as the model gives them
    normalize: bool | None
    enqueued_ms: int
    deadline_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class EmbedTask(EmbedInputs):
    """A synchronous request: answered with a ``TaskReply`` on ``reply_to``, rendered as ``encoding_format``."""

    reply_to: str
    encoding_format: EncodingFormat
    output_dtype: OutputDtype = "float"
    #: the request's trace, as a propagator carrier; None when the API does not trace
    trace_context: dict[str, str] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SparseEmbedTask(EmbedTask):
    """TEI's ``/embed_sparse``: an embed task for a sparse model only (any other kind is refused, naming its route),
    answered in TEI's shape, ``[[{"index", "value"}, ...], ...]``. The same request on ``/v1/embeddings`` is an
    ``EmbedTask``, answered with ``sparse_embedding`` items for a sparse model."""


@dataclasses.dataclass(frozen=True, slots=True)
class RerankTask:
    """A rerank request: ``query`` scored against each document, answered on ``reply_to``."""

    request_id: str
    model: str
    query: str
    #: the documents, in the client's order
    inputs: list[str]
    #: cut pairs longer than the model reads (longest first), or refuse them
    truncate: bool
    #: cut each document to this many tokens first
    max_tokens_per_doc: int | None
    #: the model's logits rather than its activation of them
    raw_scores: bool
    enqueued_ms: int
    deadline_ms: int
    reply_to: str
    #: as ``EmbedTask``'s
    trace_context: dict[str, str] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TokenizeTask:
    """A tokenize request (TEI's ``/tokenize``): each text, with the prompt chosen as for an embedding, as the
    model's tokenizer cuts it into tokens. Its ``TaskReply`` carries TEI's answer as JSON."""

    request_id: str
    model: str
    #: the texts, in the client's order
    inputs: list[str]
    add_special_tokens: bool
    #: a key of the model's prompts; None: the model's default prompt, as for an embedding
    prompt_name: str | None
    #: only the tokens the model reads (cut to its maximum length), or all of them
    truncate: bool
    enqueued_ms: int
    deadline_ms: int
    reply_to: str
    #: as ``EmbedTask``'s
    trace_context: dict[str, str] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class DecodeTask:
    """A decode request (TEI's ``/decode``): token-id lists of the model's vocabulary back to text. Its
    ``TaskReply`` carries the texts as a JSON array."""

    request_id: str
    model: str
    #: token-id lists, in the client's order
    inputs: list[list[int]]
    skip_special_tokens: bool
    enqueued_ms: int
    deadline_ms: int
    reply_to: str
    #: as ``EmbedTask``'s
    trace_context: dict[str, str] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TokenEmbedTask:
    """A multi-vector request (vLLM's ``/pooling`` with ``task: token_embed``, TEI's ``/embed_all``): one vector per
    token of each text. Its ``TaskReply`` carries the answer's per-text items, rendered as ``layout`` says."""

    request_id: str
    model: str
    #: the texts, in the client's order
    inputs: list[str]
    truncate: bool
    #: as ``EmbedInputs``': a key of the model's prompts; ``query`` / ``document`` (``encode_query`` /
    #: ``encode_document``); neither: ``encode``
    prompt_name: str | None
    input_type: str | None
    encoding_format: EncodingFormat
    #: ``pooling``: vLLM's ``data`` items; ``tei``: TEI's bare nested lists
    layout: Literal["pooling", "tei"]
    enqueued_ms: int
    deadline_ms: int
    reply_to: str
    #: as ``EmbedTask``'s
    trace_context: dict[str, str] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class EmbedChunk(EmbedInputs):
    """Chunk ``chunk`` of the asynchronous job or batch ``parent_job``: stored, not answered."""

    parent_job: str
    chunk: int
    #: a batch chunk: how many inputs each of its requests has, in order; each request succeeds or fails alone
    parts: list[int] | None = None
    #: when the stored results expire (epoch seconds); 0: at the deadline (a job's deadline is its results' expiry)
    results_expire_at_s: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class TaskError:
    kind: ErrorKind
    message: str
    param: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TaskReply:
    """A worker's answer to a ``EmbedTask``: the rendered ``data`` array, or an error."""

    request_id: str
    #: the OpenAI ``data`` array as JSON
    data: bytes = b""
    prompt_tokens: int = 0
    error: TaskError | None = None
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    #: texts and requests in the largest batch that served this request
    batch_size: int = 0
    batch_requests: int = 0


_FIELDS = {
    cls: tuple(field.name for field in dataclasses.fields(cls))
    for cls in (EmbedTask, SparseEmbedTask, RerankTask, TokenizeTask, DecodeTask, TokenEmbedTask, EmbedChunk, TaskReply)
}
#: the ``task`` of a message on the sync queue
_TASKS: dict[type[Any], str] = {
    SparseEmbedTask: "embed_sparse",
    EmbedTask: "embed",
    RerankTask: "rerank",
    TokenizeTask: "tokenize",
    DecodeTask: "decode",
    TokenEmbedTask: "token_embed",
}


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


def encode_job(job: EmbedTask | RerankTask | TokenizeTask | DecodeTask | TokenEmbedTask | EmbedChunk) -> bytes:
    # built by hand: dataclasses.asdict deep-copies every input, and this runs once a request
    fields = {field: getattr(job, field) for field in _FIELDS[type(job)]}
    task = _TASKS.get(type(job))
    return _pack(fields if task is None else {"task": task, **fields})


def decode_sync_task(data: bytes) -> EmbedTask | RerankTask | TokenizeTask | DecodeTask | TokenEmbedTask:
    """What a message on the sync queue asks: an embedding, a rerank, a tokenize or a decode; ProtocolError if it
    is none of them."""
    fields = _unpack(data, "job")
    task = fields.pop("task", None)
    if task == "tokenize":
        tokenize: TokenizeTask = _build(TokenizeTask, fields, "job")
        if not isinstance(tokenize.inputs, list) or not all(isinstance(text, str) for text in tokenize.inputs):
            raise ProtocolError("job has malformed inputs")
        return _checked_trace(tokenize)
    if task == "decode":
        decode: DecodeTask = _build(DecodeTask, fields, "job")
        if not isinstance(decode.inputs, list) or not all(
            isinstance(ids, list) and all(type(token) is int for token in ids) for ids in decode.inputs
        ):
            raise ProtocolError("job has malformed inputs")
        return _checked_trace(decode)
    if task == "token_embed":
        tokens: TokenEmbedTask = _build(TokenEmbedTask, fields, "job")
        if not isinstance(tokens.inputs, list) or not all(isinstance(text, str) for text in tokens.inputs):
            raise ProtocolError("job has malformed inputs")
        if tokens.encoding_format not in ("float", "base64") or tokens.layout not in ("pooling", "tei"):
            raise ProtocolError("job has an unknown encoding format")
        return _checked_trace(tokens)
    if task == "embed_sparse":
        sparse: SparseEmbedTask = _build(SparseEmbedTask, fields, "job")
        return _checked_trace(_checked(sparse))
    if task == "rerank":
        job: RerankTask = _build(RerankTask, fields, "job")
        if not isinstance(job.query, str) or not isinstance(job.inputs, list):
            raise ProtocolError("job has malformed inputs")
        if not all(isinstance(document, str) for document in job.inputs):
            raise ProtocolError("job has malformed inputs")
        return _checked_trace(job)
    if task != "embed":
        raise ProtocolError(f"job has an unknown task {task!r}")
    embedding: EmbedTask = _build(EmbedTask, fields, "job")
    return _checked_trace(_checked(embedding))


def decode_embedding(data: bytes, kind: type[Job]) -> Job:
    """A ``EmbedChunk`` (or an embedding ``EmbedTask``), as the queue it came from says; ProtocolError if it is not
    one."""
    fields = _unpack(data, "job")
    if kind is EmbedTask and fields.pop("task", None) != "embed":
        raise ProtocolError("job is not an embedding")
    job: Job = _build(kind, fields, "job")
    return _checked(job)


def _checked(job: Job) -> Job:
    if job.input_kind not in INPUT_KINDS or not isinstance(job.inputs, list):
        raise ProtocolError("job has malformed inputs")
    if job.input_kind == "mixed" and not all(_text_or_image(item) for item in job.inputs):
        raise ProtocolError("job has malformed inputs")
    if not (job.truncate is None or isinstance(job.truncate, bool) or job.truncate == "chunk"):
        raise ProtocolError("job has an unknown truncation")
    if isinstance(job, EmbedTask) and job.encoding_format not in ("float", "base64"):
        raise ProtocolError("job has an unknown encoding format")
    if isinstance(job, EmbedTask) and job.output_dtype not in OUTPUT_DTYPES:
        raise ProtocolError("job has an unknown output dtype")
    if isinstance(job, EmbedChunk) and job.parts is not None and sum(job.parts) != len(job.inputs):
        raise ProtocolError("chunk's parts do not add up to its inputs")
    return job


def _text_or_image(item: Any) -> bool:
    if isinstance(item, str):
        return True
    return isinstance(item, dict) and len(item) == 1 and isinstance(item.get(IMAGE_KEY), str)


def _checked_trace(job: SyncTask) -> SyncTask:
    carrier = job.trace_context
    if carrier is not None and not (
        isinstance(carrier, dict) and all(isinstance(v, str) and isinstance(k, str) for k, v in carrier.items())
    ):
        raise ProtocolError("job has a malformed trace context")
    return job


def encode_reply(reply: TaskReply) -> bytes:
    fields = {field: getattr(reply, field) for field in _FIELDS[TaskReply]}
    if reply.error is not None:
        fields["error"] = {"kind": reply.error.kind.value, "message": reply.error.message, "param": reply.error.param}
    return _pack(fields)


def decode_reply(data: bytes) -> TaskReply:
    fields = _unpack(data, "reply")
    error = fields.get("error")
    if error is not None:
        try:
            fields["error"] = TaskError(ErrorKind(error["kind"]), str(error["message"]), error.get("param"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError("reply has a malformed error") from exc
    reply: TaskReply = _build(TaskReply, fields, "reply")
    return reply

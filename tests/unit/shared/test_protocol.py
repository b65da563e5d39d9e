import msgpack
import pytest

from shared.errors import ErrorKind, ProtocolError
from shared.protocol import (
    PROTOCOL_VERSION,
    EmbedChunk,
    EmbedTask,
    RerankTask,
    TaskError,
    TaskReply,
    TokenEmbedTask,
    decode_embedding,
    decode_reply,
    decode_sync_task,
    encode_job,
    encode_reply,
)
from tests.fakes import make_embed_chunk, make_embed_task, make_rerank_task


def make_job(**overrides) -> EmbedTask:
    return make_embed_task(**{"inputs": ["a", "ü"], **overrides})


def test_sync_job_round_trip():
    for job in (make_job(), make_job(input_kind="tokens", inputs=[[1, 2], [3]], dimensions=8, truncate=False)):
        assert decode_embedding(encode_job(job), EmbedTask) == job


def test_the_sync_queue_carries_embeddings_and_reranks():
    embedding = make_job(output_dtype="ubinary", encoding_format="base64")
    rerank = make_rerank_task(max_tokens_per_doc=12, raw_scores=True, truncate=False)
    assert decode_sync_task(encode_job(embedding)) == embedding
    assert decode_sync_task(encode_job(rerank)) == rerank
    assert isinstance(decode_sync_task(encode_job(rerank)), RerankTask)
    with pytest.raises(ProtocolError):
        decode_embedding(encode_job(rerank), EmbedTask)
    with pytest.raises(ProtocolError):
        decode_embedding(encode_job(rerank), EmbedChunk)
    with pytest.raises(ProtocolError):
        decode_sync_task(encode_job(make_embed_chunk()))  # no task: not a sync-queue message


@pytest.mark.parametrize(
    "overrides",
    [{"task": "classify"}, {"inputs": ["a", 3]}, {"query": ["q"]}, {"inputs": "abc"}],
)
def test_a_malformed_rerank_job_is_rejected(overrides):
    fields = msgpack.unpackb(encode_job(make_rerank_task()), raw=False) | overrides
    with pytest.raises(ProtocolError):
        decode_sync_task(msgpack.packb(fields, use_bin_type=True))


def test_an_unknown_output_dtype_is_rejected():
    with pytest.raises(ProtocolError):
        decode_sync_task(encode_job(make_job(output_dtype="int8")))


def test_chunk_job_round_trip():
    job = make_embed_chunk(chunk=3, dimensions=2)
    assert decode_embedding(encode_job(job), EmbedChunk) == job
    batch_chunk = make_embed_chunk(parts=[1, 1], results_expire_at_s=2_000_000_000)
    assert decode_embedding(encode_job(batch_chunk), EmbedChunk) == batch_chunk


def test_a_chunk_written_before_batches_still_decodes():
    fields = msgpack.unpackb(encode_job(make_embed_chunk()), raw=False)
    del fields["parts"], fields["results_expire_at_s"]
    job = decode_embedding(msgpack.packb(fields, use_bin_type=True), EmbedChunk)
    assert job.parts is None and job.results_expire_at_s == 0


def test_a_batch_chunk_whose_parts_do_not_add_up_is_rejected():
    with pytest.raises(ProtocolError):
        decode_embedding(encode_job(make_embed_chunk(parts=[1, 5])), EmbedChunk)


def test_a_job_of_one_kind_does_not_decode_as_the_other():
    with pytest.raises(ProtocolError):
        decode_embedding(encode_job(make_job()), EmbedChunk)
    with pytest.raises(ProtocolError):
        decode_embedding(encode_job(make_embed_chunk()), EmbedTask)


def test_reply_with_a_rendered_data_array_round_trips():
    reply = TaskReply("r1", data=b'[{"object":"embedding","index":0,"embedding":[1.0]}]', prompt_tokens=5)
    assert decode_reply(encode_reply(reply)) == reply


def test_job_with_an_unknown_encoding_format_is_rejected():
    with pytest.raises(ProtocolError):
        decode_embedding(encode_job(make_job(encoding_format="hex")), EmbedTask)


def test_error_reply_round_trip():
    reply = TaskReply("r1", error=TaskError(ErrorKind.MODEL_NOT_FOUND, "no such model", "model"))
    assert decode_reply(encode_reply(reply)) == reply


def test_messages_are_msgpack_with_a_version():
    message = msgpack.unpackb(encode_job(make_job()), raw=False)
    assert message["v"] == PROTOCOL_VERSION


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # never used in msgpack
        msgpack.packb([1, 2]),
        msgpack.packb({"v": PROTOCOL_VERSION + 1, "request_id": "r"}),
        msgpack.packb({"v": PROTOCOL_VERSION, "request_id": "r"}),
        msgpack.packb({"v": PROTOCOL_VERSION, **{"unknown": 1}}),
    ],
)
def test_undecodable_job_raises_protocol_error(data):
    with pytest.raises(ProtocolError):
        decode_embedding(data, EmbedTask)


def test_job_with_bad_input_kind_is_rejected():
    with pytest.raises(ProtocolError):
        decode_embedding(encode_job(make_job(input_kind="images")), EmbedTask)


def test_texts_and_images_and_chunking_travel_as_they_are():
    job = make_job(input_kind="mixed", inputs=["a", {"image": "data:image/png;base64,AA"}], truncate="chunk")
    assert decode_embedding(encode_job(job), EmbedTask) == job
    chunk = make_embed_chunk(input_kind="mixed", inputs=[{"image": "https://x/a.png"}], truncate="chunk")
    assert decode_embedding(encode_job(chunk), EmbedChunk) == chunk


def test_a_truncate_the_request_did_not_say_travels_as_none():
    """None: the worker applies the deployment's default for the model's kind (``worker.long_inputs``)."""
    job = make_job(truncate=None)
    assert decode_embedding(encode_job(job), EmbedTask).truncate is None


@pytest.mark.parametrize(
    "overrides",
    [
        {"input_kind": "mixed", "inputs": [{"image": 3}]},
        {"input_kind": "mixed", "inputs": [{"image": "x", "extra": "y"}]},
        {"input_kind": "mixed", "inputs": [[1, 2]]},
        {"truncate": "cut"},
        {"truncate": 1},
    ],
)
def test_malformed_images_and_truncations_are_rejected(overrides):
    with pytest.raises(ProtocolError):
        decode_embedding(encode_job(make_job(**overrides)), EmbedTask)


def test_reply_with_unknown_error_kind_is_rejected():
    fields = {"v": PROTOCOL_VERSION, "request_id": "r", "error": {"kind": "nope", "message": "m"}}
    with pytest.raises(ProtocolError):
        decode_reply(msgpack.packb(fields))


@pytest.mark.parametrize("carrier", [["00-abc"], {"traceparent": 1}, "00-abc"])
@pytest.mark.parametrize("make", [make_job, make_rerank_task])
def test_a_malformed_trace_context_is_rejected(make, carrier):
    fields = msgpack.unpackb(encode_job(make()), raw=False) | {"trace_context": carrier}
    with pytest.raises(ProtocolError, match="trace context"):
        decode_sync_task(msgpack.packb(fields, use_bin_type=True))


def test_a_traced_job_round_trips():
    carrier = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "k=v"}
    for job in (make_job(trace_context=carrier), make_rerank_task(trace_context=carrier)):
        assert decode_sync_task(encode_job(job)) == job


def _token_embed_task(**overrides: object) -> TokenEmbedTask:
    fields: dict[str, object] = dict(
        request_id="r1",
        model="mv",
        inputs=["a", "ü"],
        truncate=True,
        prompt_name=None,
        input_type="query",
        encoding_format="base64",
        layout="pooling",
        enqueued_ms=1,
        deadline_ms=2,
        reply_to="reply",
    )
    return TokenEmbedTask(**{**fields, **overrides})  # type: ignore[arg-type]


def test_a_token_embed_task_round_trips_and_a_malformed_one_is_rejected():
    task = _token_embed_task()
    assert decode_sync_task(encode_job(task)) == task
    for overrides in ({"inputs": ["a", 3]}, {"encoding_format": "binary"}, {"layout": "cohere"}):
        fields = msgpack.unpackb(encode_job(task), raw=False) | overrides
        with pytest.raises(ProtocolError):
            decode_sync_task(msgpack.packb(fields, use_bin_type=True))

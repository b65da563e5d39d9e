"""``shared.protocol``: the tokenize and decode tasks on the sync queue."""

import msgpack
import pytest

from shared.errors import ProtocolError
from shared.protocol import DecodeTask, EmbedTask, TokenizeTask, decode_embedding, decode_sync_task, encode_job


def tokenize_task(**overrides):
    fields = dict(
        request_id="r1",
        model="m",
        inputs=["a", "b"],
        add_special_tokens=True,
        prompt_name="query",
        truncate=False,
        enqueued_ms=1,
        deadline_ms=2,
        reply_to="replies",
    )
    return TokenizeTask(**{**fields, **overrides})


def decode_task(**overrides):
    fields = dict(
        request_id="r1",
        model="m",
        inputs=[[1, 2], []],
        skip_special_tokens=True,
        enqueued_ms=1,
        deadline_ms=2,
        reply_to="replies",
    )
    return DecodeTask(**{**fields, **overrides})


def test_tokenize_and_decode_tasks_round_trip_named_by_their_task():
    for task, name in ((tokenize_task(), "tokenize"), (decode_task(trace_context={"traceparent": "x"}), "decode")):
        message = encode_job(task)
        assert msgpack.unpackb(message)["task"] == name
        assert decode_sync_task(message) == task
        with pytest.raises(ProtocolError, match="not an embedding"):
            decode_embedding(message, EmbedTask)


@pytest.mark.parametrize(
    "task",
    [
        tokenize_task(inputs=[1]),
        tokenize_task(inputs="a"),
        decode_task(inputs=[1, 2]),
        decode_task(inputs=[["1"]]),
        decode_task(inputs=[[True]]),
        decode_task(trace_context={"a": 1}),
    ],
)
def test_malformed_tokenize_and_decode_tasks_are_rejected(task):
    with pytest.raises(ProtocolError, match="malformed"):
        decode_sync_task(encode_job(task))

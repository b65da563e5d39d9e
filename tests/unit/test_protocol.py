import msgpack
import numpy as np
import pytest

from shared.errors import ErrorKind, ProtocolError
from shared.protocol import (
    PROTOCOL_VERSION,
    EmbedError,
    EmbedJob,
    EmbedResult,
    decode_job,
    decode_result,
    encode_job,
    encode_result,
)
from tests.fakes import make_embed_job


def make_job(**overrides) -> EmbedJob:
    return make_embed_job(**{"inputs": ["a", "ü"], **overrides})


def test_job_round_trip():
    for job in (make_job(), make_job(input_kind="tokens", inputs=[[1, 2], [3]], dimensions=8, truncate=False)):
        assert decode_job(encode_job(job)) == job


def test_result_round_trip_keeps_float32_bytes():
    vectors = np.arange(6, dtype="<f4").reshape(2, 3)
    result = EmbedResult("r1", vectors=vectors.tobytes(), count=2, dim=3, prompt_tokens=5, batch_requests=2)
    decoded = decode_result(encode_result(result))
    assert decoded == result
    assert np.frombuffer(decoded.vectors, dtype="<f4").reshape(2, 3).tolist() == vectors.tolist()


def test_result_with_a_rendered_data_array_round_trips():
    result = EmbedResult("r1", data=b'[{"object":"embedding","index":0,"embedding":[1.0]}]', count=1, dim=1)
    assert decode_result(encode_result(result)) == result


def test_job_with_an_unknown_encoding_format_is_rejected():
    with pytest.raises(ProtocolError):
        decode_job(encode_job(make_job(encoding_format="hex")))


def test_error_result_round_trip():
    result = EmbedResult("r1", error=EmbedError(ErrorKind.MODEL_NOT_FOUND, "no such model", "model"))
    assert decode_result(encode_result(result)) == result


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
        decode_job(data)


def test_job_with_bad_input_kind_is_rejected():
    with pytest.raises(ProtocolError):
        decode_job(encode_job(make_job(input_kind="images")))


def test_result_whose_vectors_do_not_match_its_shape_is_rejected():
    with pytest.raises(ProtocolError):
        decode_result(encode_result(EmbedResult("r", vectors=b"\0" * 8, count=1, dim=3)))


def test_result_with_unknown_error_kind_is_rejected():
    fields = {"v": PROTOCOL_VERSION, "request_id": "r", "error": {"kind": "nope", "message": "m"}}
    with pytest.raises(ProtocolError):
        decode_result(msgpack.packb(fields))

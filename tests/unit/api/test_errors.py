import orjson
import pytest

from api.errors import ERROR_TABLE, RETRY_AFTER_S, error_response
from shared.errors import ErrorKind, ProtocolError, ServiceError


def test_every_error_kind_has_a_status():
    assert set(ERROR_TABLE) == set(ErrorKind)


def test_statuses_are_the_documented_ones():
    statuses = {status for status, _ in ERROR_TABLE.values()}
    assert statuses == {400, 401, 404, 405, 409, 410, 413, 429, 500, 503, 504, 507}


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_error_body_is_openai_shaped(kind):
    response = error_response(kind, "msg", "input")
    body = orjson.loads(response.body)
    assert set(body) == {"error"}
    assert body["error"] == {"message": "msg", "type": ERROR_TABLE[kind][1], "param": "input", "code": kind.value}
    assert response.status_code == ERROR_TABLE[kind][0]
    if response.status_code in RETRY_AFTER_S:
        assert response.headers["retry-after"] == str(RETRY_AFTER_S[response.status_code])
    else:
        assert "retry-after" not in response.headers


def test_protocol_error_is_an_internal_service_error():
    error = ProtocolError("bad bytes")
    assert isinstance(error, ServiceError) and error.kind is ErrorKind.INTERNAL

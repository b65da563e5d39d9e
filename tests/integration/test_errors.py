"""Every bad input gets its status and an OpenAI-shaped body, fast, and disturbs no other request."""

import asyncio
import time

import httpx
import pytest

from tests.integration.conftest import MODEL, TEXTS, assert_same_vectors, vectors_of


def assert_error(response: httpx.Response, status: int, code: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert len(response.headers["x-request-id"]) == 32
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and isinstance(error["message"], str)
    if param is not None:
        assert error["param"] == param
    assert "Traceback" not in response.text and "/work/" not in response.text and ".py" not in response.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": [""]}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": 42}, "input"),
        ({"input": ["a", 1]}, "input"),
        ({"input": [1.5]}, "input"),
        ({"input": [-3]}, "input"),
        ({"input": None}, "input"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": "12"}, "dimensions"),
        ({"input": "x", "encodin_format": "base64"}, "encodin_format"),  # a typo must not change the answer
        ({"input": "x", "output_dtype": "int4"}, "output_dtype"),
        ({"input": "x", "output_dtype": "int8"}, "output_dtype"),
    ],
)
def test_malformed_requests_are_400(client, body, param):
    assert_error(client.post("/v1/embeddings", json={"model": MODEL, **body}), 400, "invalid_request", param)


def test_missing_model_is_400(client):
    assert_error(client.post("/v1/embeddings", json={"input": "x"}), 400, "invalid_request", "model")


def test_invalid_json_is_400(client):
    response = client.post("/v1/embeddings", content=b'{"input": ', headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_request")


def test_too_many_inputs_is_400(client):
    assert_error(client.post("/v1/embeddings", json={"model": MODEL, "input": ["x"] * 2049}), 400, "invalid_request")


def test_too_many_characters_is_400(client):
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": "x" * 50_001})
    assert_error(response, 400, "invalid_request", "input")


def test_body_too_large_is_413(client):
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": ["word " * 9000] * 400})
    assert_error(response, 413, "payload_too_large")


def test_dimensions_above_the_model_is_400(client):
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": "x", "dimensions": 385})
    assert_error(response, 400, "invalid_request", "dimensions")


def test_token_id_outside_the_vocabulary_is_400(client):
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": [[101, 30522]]})
    assert_error(response, 400, "invalid_request", "input")


def test_too_long_input_without_truncation_is_400(client):
    long_text = " ".join(["embedding"] * 300)
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": long_text, "truncate": False})
    assert_error(response, 400, "context_length_exceeded", "input")


def test_unknown_model_is_a_fast_404_and_the_worker_goes_on(client, reference):
    started = time.monotonic()
    for _ in range(2):  # the second answer comes from the worker's memory of the failure
        response = client.post("/v1/embeddings", json={"model": "no-such-org/no-such-model", "input": "x"})
        assert_error(response, 404, "model_not_found", "model")
    assert time.monotonic() - started < 30
    ok = client.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS[:2]})
    assert ok.status_code == 200
    assert_same_vectors(vectors_of(ok.json()), reference(TEXTS[:2]))


def test_unknown_route_and_method(client):
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.get("/v1/embeddings"), 405, "method_not_allowed")


def test_bad_requests_do_not_disturb_good_ones_sent_with_them(base_url, reference):
    bad_bodies = [
        {"model": MODEL, "input": [[101, 99999]]},
        {"model": MODEL, "input": "x", "dimensions": 999},
        {"model": "no-such-org/no-such-model", "input": "x"},
        {"model": MODEL, "input": " ".join(["word"] * 400), "truncate": False},
    ]
    good_inputs = [TEXTS[i : i + 3] for i in range(0, 6)]

    async def send_all():
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            bad = [client.post("/v1/embeddings", json=body) for body in bad_bodies]
            good = [client.post("/v1/embeddings", json={"model": MODEL, "input": t}) for t in good_inputs]
            return await asyncio.gather(*bad, *good)

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses[: len(bad_bodies)]] == [400, 400, 404, 400]
    for texts, response in zip(good_inputs, responses[len(bad_bodies) :], strict=True):
        assert response.status_code == 200
        assert_same_vectors(vectors_of(response.json()), reference(texts))

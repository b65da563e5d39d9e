"""``api.tokenize.routes``: TEI's ``/tokenize`` and ``/decode`` in process, over fakeredis, answered by the real
``TaskService`` (``worker.sync_jobs``, ``worker.tokenizing``) on a real MiniLM encoder."""

import pytest

from shared.settings import Settings
from tests import model_fixtures
from tests.fakes import FakeEncoder, served_app
from worker.models.encoder import SentenceTransformerEncoder


@pytest.fixture(scope="module")
def minilm():
    return SentenceTransformerEncoder(model_fixtures._minilm())


@pytest.fixture
async def client(minilm):
    settings = Settings(_env_file=None, embed_models=["minilm"], allowed_models=["stub"])
    async with served_app(settings, models={"minilm": minilm, "stub": FakeEncoder()}, max_tokens=50) as (_, client):
        yield client


async def test_tokenize_and_decode_answer_teis_shapes(client, minilm):
    response = await client.post("/tokenize", json={"model": "minilm", "inputs": "hello world"})
    assert response.status_code == 200, response.text
    assert response.json() == [
        [
            {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None},
            {"id": 7592, "text": "hello", "special": False, "start": 0, "stop": 5},
            {"id": 2088, "text": "world", "special": False, "start": 6, "stop": 11},
            {"id": 102, "text": "[SEP]", "special": True, "start": None, "stop": None},
        ]
    ]
    assert "x-queue-time-ms" in response.headers
    decoded = await client.post("/decode", json={"model": "minilm", "ids": [101, 7592, 2088, 102]})
    assert decoded.json() == ["hello world"]
    kept = await client.post("/decode", json={"model": "minilm", "ids": [[101, 7592]], "skip_special_tokens": False})
    assert kept.json() == ["[CLS] hello"]


async def test_errors(client):
    cases = [
        ("/tokenize", {"model": "minilm", "inputs": []}, 400, "invalid_request"),
        ("/tokenize", {"model": "minilm", "inputs": ""}, 400, "invalid_request"),
        ("/tokenize", {"model": "minilm", "inputs": "x", "extra": 1}, 400, "invalid_request"),
        ("/tokenize", {"model": "elsewhere", "inputs": "x"}, 404, "model_not_found"),
        ("/tokenize", {"inputs": "x"}, 400, "invalid_request"),  # two models served: it must be named
        ("/tokenize", {"model": "minilm", "inputs": " ".join(["w"] * 60)}, 400, "invalid_request"),  # MAX_TOKENS
        ("/tokenize", {"model": "minilm", "inputs": "x", "prompt_name": "nope"}, 400, "invalid_request"),
        ("/tokenize", {"model": "stub", "inputs": "x"}, 400, "invalid_request"),
        ("/decode", {"model": "minilm", "ids": [30522]}, 400, "invalid_request"),
        ("/decode", {"model": "minilm", "ids": []}, 400, "invalid_request"),
        ("/decode", {"model": "minilm", "ids": [-1]}, 400, "invalid_request"),
    ]
    for path, body, status, code in cases:
        response = await client.post(path, json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), (path, body)
    out = await client.post("/decode", json={"model": "minilm", "ids": [[1], [99999]]})
    assert out.json()["error"] == {
        "message": "token id 99999 is outside this model's vocabulary (0..30521)",
        "type": "invalid_request_error",
        "param": "ids",
        "code": "invalid_request",
    }


async def test_a_sole_model_may_go_unnamed_and_the_document_says_when(minilm):
    async with served_app(
        Settings(_env_file=None, embed_models=["minilm"]), models={"minilm": minilm}, max_tokens=50
    ) as (_, client):
        response = await client.post("/tokenize", json={"inputs": ["a", "b c"], "add_special_tokens": False})
        assert [[token["text"] for token in tokens] for tokens in response.json()] == [["a"], ["b", "c"]]
        assert (await client.post("/decode", json={"ids": [1037]})).json() == ["a"]
        document = (await client.get("/openapi.json")).json()
        for path in ("/tokenize", "/decode"):
            schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
            assert "model" not in schema.get("required", [])
    settings = Settings(_env_file=None, embed_models=["minilm"], allow_any_model=True)
    async with served_app(settings, models={"minilm": minilm}, max_tokens=50) as (_, client):
        document = (await client.get("/openapi.json")).json()
        for path in ("/tokenize", "/decode"):
            schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
            assert "model" in schema["required"] and schema["properties"]["model"]["type"] == "string"

"""``api.sparse.routes``: TEI's ``/embed_sparse``, and ``/v1/embeddings`` for a sparse model, in process over
fakeredis, answered by the real ``TaskService`` (``worker.sync_jobs``, ``worker.sparse_pipeline``) on a fixture
SPLADE next to MiniLM."""

import numpy as np
import pytest
from sentence_transformers import SparseEncoder

from shared.settings import Settings
from tests import model_fixtures
from tests.fakes import served_app
from worker.models.encoder import SentenceTransformerEncoder
from worker.models.sparse_encoder import SparseEncoderModel


@pytest.fixture(scope="module")
def splade(tmp_path_factory) -> SparseEncoder:
    path = model_fixtures.build_sparse(tmp_path_factory.mktemp("sparse"))[model_fixtures.SPLADE]
    return SparseEncoder(str(path), device="cpu")


@pytest.fixture
async def client(splade):
    models = {"splade": SparseEncoderModel(splade), "minilm": SentenceTransformerEncoder(model_fixtures._minilm())}
    settings = Settings(_env_file=None, embed_models=["minilm"], allowed_models=["splade"])
    async with served_app(settings, models=models, max_tokens=50) as (_, client):
        yield client


async def test_embed_sparse_answers_teis_shape(client, splade):
    response = await client.post("/embed_sparse", json={"model": "splade", "inputs": ["hello world", "a"]})
    assert response.status_code == 200, response.text
    expected = splade.encode(["hello world", "a"], convert_to_tensor=True, convert_to_sparse_tensor=False).numpy()
    body = response.json()
    assert len(body) == 2
    for values, row in zip(body, expected, strict=True):
        assert [value["index"] for value in values] == np.nonzero(row)[0].tolist()
        assert np.abs(np.array([value["value"] for value in values]) - row[row != 0]).max() <= 1e-5
    assert "x-queue-time-ms" in response.headers


async def test_v1_embeddings_answers_sparse_items(client, splade):
    response = await client.post("/v1/embeddings", json={"model": "splade", "input": "hello world"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"object", "data", "model", "usage"}
    item = body["data"][0]
    assert (item["object"], item["index"]) == ("sparse_embedding", 0)
    assert len(item["indices"]) == len(item["values"]) > 0
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


async def test_errors(client):
    cases = [
        ("/embed_sparse", {"model": "splade", "inputs": []}, "inputs"),
        ("/embed_sparse", {"model": "splade", "inputs": [1, 2]}, "inputs"),
        ("/embed_sparse", {"model": "splade", "inputs": ""}, "inputs"),
        ("/embed_sparse", {"model": "splade", "inputs": "x", "truncation_direction": "Left"}, "truncation_direction"),
        ("/embed_sparse", {"inputs": "x"}, "model"),  # two models served: it must be named
        ("/embed_sparse", {"model": "minilm", "inputs": "x"}, "model"),
        ("/v1/embeddings", {"model": "splade", "input": "x", "dimensions": 2}, "dimensions"),
        ("/v2/embed", {"model": "splade", "texts": ["x"], "input_type": "search_query"}, "model"),  # not Cohere's
    ]
    for path, body, param in cases:
        response = await client.post(path, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, body
    wrong = await client.post("/embed_sparse", json={"model": "minilm", "inputs": "x"})
    assert wrong.json()["error"]["message"] == (
        "model 'minilm' is an embedding model, not a sparse model; use it with /v1/embeddings"
    )
    unknown = await client.post("/embed_sparse", json={"model": "elsewhere", "inputs": "x"})
    assert unknown.status_code == 404


async def test_the_document_describes_the_route(client):
    document = (await client.get("/openapi.json")).json()
    operation = document["paths"]["/embed_sparse"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert "model" in schema["required"]  # two models served: the document says it must be named
    items = document["paths"]["/v1/embeddings"]["post"]["responses"]["200"]["content"]["application/json"]
    assert "SparseEmbeddingItem" in str(items) or "SparseEmbeddingItem" in str(document["components"])

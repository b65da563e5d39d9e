"""The OpenAI embeddings contract over the real stack: vectors match a direct in-process encode."""

import base64

import numpy as np

from tests.integration.conftest import MODEL, TEXTS, assert_same_vectors, unit_rows, vectors_of


def embed(client, **body):
    response = client.post("/v1/embeddings", json={"model": MODEL, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_vectors_equal_a_direct_encode(client, reference):
    body = embed(client, input=TEXTS)
    assert body["object"] == "list" and body["model"] == MODEL
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    vectors = vectors_of(body)
    assert vectors.shape == (len(TEXTS), 384)
    assert_same_vectors(vectors, reference(TEXTS))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_single_string(client, reference):
    body = embed(client, input=TEXTS[0])
    assert_same_vectors(vectors_of(body), reference(TEXTS[:1]))


def test_usage_counts_the_models_tokens(client, reference_model):
    body = embed(client, input=TEXTS)
    expected = sum(len(reference_model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS)
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}


def test_token_ids_give_the_same_vectors_as_their_text(client, reference, reference_model):
    ids = [reference_model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS[:3]]
    body = embed(client, input=ids)
    assert_same_vectors(vectors_of(body), reference(TEXTS[:3]))
    single = embed(client, input=ids[0])
    assert_same_vectors(vectors_of(single), reference(TEXTS[:1]))


def test_base64_is_the_same_float32_vector(client):
    floats = vectors_of(embed(client, input=TEXTS[:2]))
    encoded = embed(client, input=TEXTS[:2], encoding_format="base64")
    for item, expected in zip(encoded["data"], floats, strict=True):
        decoded = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        assert decoded.shape == (384,)
        assert np.allclose(decoded, expected, atol=1e-7)


def test_dimensions_truncate_and_renormalize(client, reference):
    body = embed(client, input=TEXTS[:3], dimensions=64)
    vectors = vectors_of(body)
    assert vectors.shape == (3, 64)
    expected = unit_rows(reference(TEXTS[:3])[:, :64])
    assert_same_vectors(vectors, expected)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_long_text_is_truncated_like_sentence_transformers(client, reference):
    long_text = " ".join(["embedding servers batch requests"] * 200)
    body = embed(client, input=long_text)
    assert_same_vectors(vectors_of(body), reference([long_text]))
    assert body["usage"]["prompt_tokens"] == 254  # 256 minus [CLS] and [SEP]


def test_timing_headers(client):
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": "hi"})
    for header in ("x-request-id", "x-queue-time-ms", "x-inference-time-ms", "x-batch-size", "x-batch-requests"):
        assert header in response.headers


def test_models_health_and_readiness(client):
    models = client.get("/v1/models").json()
    assert MODEL in [m["id"] for m in models["data"]]
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] == 1
    assert client.get("/docs").status_code == 200

"""Security rules over real processes: keys, a password-protected Redis, the model allowlist, limits, logs."""

import time

import cohere
import httpx
import numpy as np
import openai
import pytest
import redis

from tests.integration.conftest import MODEL, TEXTS, assert_same_vectors, vectors_of
from tests.stack import running_stack

KEY = "sk-test-4f1d9c2e8b7a6"
REDIS_PASSWORD = "redis-pass-81f2"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    env = {"API_KEYS": KEY, "MAX_TOKENS_PER_REQUEST": "40", "MAX_JOB_INPUTS": "10"}
    with running_stack(tmp_path_factory.mktemp("secure"), redis_password=REDIS_PASSWORD, **env) as stack:
        yield stack


def test_redis_needs_its_password_and_the_stack_uses_it(stack, reference):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=stack.redis_port).ping()
    assert redis.Redis.from_url(stack.redis_url).ping()
    with openai.OpenAI(base_url=stack.base_url + "/v1", api_key=KEY, max_retries=0) as client:
        response = client.embeddings.create(model=MODEL, input=TEXTS[:2])
    assert_same_vectors([d.embedding for d in response.data], reference(TEXTS[:2]))


def test_a_wrong_key_is_refused_and_no_key_is_ever_logged(stack):
    wrong = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="sk-wrong", max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError):
        wrong.embeddings.create(model=MODEL, input="x")
    with httpx.Client(base_url=stack.base_url) as client:
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        assert client.get("/v1/models").status_code == 401
    time.sleep(0.2)
    logs = "".join(path.read_text(errors="replace") for path in stack.log_dir.glob("*.log"))
    assert KEY not in logs and "sk-wrong" not in logs


def test_the_cohere_routes_need_the_key_the_cohere_client_sends(stack, reference):
    with httpx.Client(base_url=stack.base_url) as client:
        open_embed = client.post("/v2/embed", json={"model": MODEL, "texts": ["x"], "embedding_types": ["float"]})
        assert open_embed.status_code == 401 and open_embed.headers["www-authenticate"] == "Bearer"
        assert client.post("/v2/rerank", json={"model": MODEL, "query": "q", "documents": ["d"]}).status_code == 401
        assert client.post("/rerank", json={"query": "q", "texts": ["d"]}).status_code == 401
    with cohere.ClientV2(base_url=stack.base_url, api_key="sk-wrong") as wrong, pytest.raises(cohere.UnauthorizedError):
        wrong.embed(model=MODEL, texts=["x"], input_type="classification", embedding_types=["float"])
    with cohere.ClientV2(base_url=stack.base_url, api_key=KEY) as client:
        response = client.embed(model=MODEL, texts=TEXTS[:2], input_type="classification", embedding_types=["float"])
    assert_same_vectors(np.array(response.embeddings.float_), reference(TEXTS[:2]))


def test_only_configured_models_are_served(stack):
    started = time.monotonic()
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        response = client.post("/v1/embeddings", json={"model": "BAAI/bge-small-en-v1.5", "input": "x"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert time.monotonic() - started < 2
    worker_log = (stack.log_dir / "worker-0.log").read_text()
    assert "bge-small" not in worker_log, "the worker must not even try to load it"


def test_token_and_job_size_limits(stack, reference):
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        too_many_tokens = client.post("/v1/embeddings", json={"model": MODEL, "input": [" ".join(["word"] * 30)] * 2})
        assert too_many_tokens.status_code == 400 and "tokens" in too_many_tokens.json()["error"]["message"]
        fits = client.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS[:2]})
        assert_same_vectors(vectors_of(fits.json()), reference(TEXTS[:2]))
        big_job = client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": ["x"] * 11})
        assert big_job.status_code == 400 and "at most 10" in big_job.json()["error"]["message"]

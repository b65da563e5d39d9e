"""The API in-process over fakeredis, with a fake worker: routing, errors, limits, response encoding."""

import asyncio
import base64
import contextlib

import fakeredis
import httpx
import numpy as np
import pytest
from prometheus_client import REGISTRY

from api import dispatch
from api.main import create_app
from shared import keys
from shared.redis_memory import MemoryInfo
from shared.settings import Settings
from shared.workers import WorkerInfo, record_heartbeat
from tests.fakes import fake_redis_factory, fake_vector, run_fake_worker, running


@pytest.fixture
def server():
    return fakeredis.FakeServer()


@pytest.fixture
def settings():
    return Settings(_env_file=None, max_body_bytes=4096, request_timeout_s=2, embed_models=["fake-model"])


@pytest.fixture
async def app(server, settings):
    app = create_app(settings, redis_factory=fake_redis_factory(server))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


@pytest.fixture
async def worker(server):
    redis = fake_redis_factory(server)(None)
    async with running(run_fake_worker(redis)):
        yield
    await redis.aclose()


def assert_openai_error(response: httpx.Response, status: int, code: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert len(response.headers["x-request-id"]) == 32  # every response, errors included, names its request
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


async def test_embeddings_float(client, worker):
    response = await client.post("/v1/embeddings", json={"input": ["ab", "cde"], "model": "fake-model"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == "fake-model"
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}  # one token a text
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert [d["object"] for d in body["data"]] == ["embedding", "embedding"]
    assert [d["embedding"] for d in body["data"]] == [fake_vector("ab"), fake_vector("cde")]
    assert response.headers["x-request-id"]


async def test_embeddings_base64_is_float32_little_endian(client, worker):
    response = await client.post(
        "/v1/embeddings", json={"input": "hello", "model": "fake-model", "encoding_format": "base64"}
    )
    encoded = response.json()["data"][0]["embedding"]
    assert np.frombuffer(base64.b64decode(encoded), dtype="<f4").tolist() == fake_vector("hello")


async def test_worker_error_maps_through_the_table(client, worker):
    response = await client.post("/v1/embeddings", json={"input": "x", "model": "missing"})
    assert_openai_error(response, 404, "model_not_found", "model")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "", "model": "fake-model"}, "input"),
        ({"input": [], "model": "fake-model"}, "input"),
        ({"input": [1, "a"], "model": "fake-model"}, "input"),
        ({"input": "x"}, "model"),
        ({"input": "x", "model": "fake-model", "encoding_format": "hex"}, "encoding_format"),
    ],
)
async def test_bad_input_is_400_without_touching_the_queue(client, server, body, param):
    response = await client.post("/v1/embeddings", json=body)
    assert_openai_error(response, 400, "invalid_request", param)
    redis = fake_redis_factory(server)(None)
    assert await redis.zcard("emb:queue:sync") == 0


async def test_invalid_json_is_400(client):
    response = await client.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert_openai_error(response, 400, "invalid_request")


async def test_body_over_the_limit_is_413(client):
    response = await client.post("/v1/embeddings", json={"input": "x" * 5000, "model": "fake-model"})
    assert_openai_error(response, 413, "payload_too_large")


async def test_streamed_body_over_the_limit_is_413(client):
    async def chunks():
        for _ in range(10):
            yield b"x" * 1000

    response = await client.post("/v1/embeddings", content=chunks())
    assert_openai_error(response, 413, "payload_too_large")


async def test_no_worker_is_503_with_retry_after(client):
    response = await client.post("/v1/embeddings", json={"input": "x", "model": "fake-model"})
    assert_openai_error(response, 503, "service_unavailable")
    assert response.headers["retry-after"] == "1"


async def test_no_heartbeat_while_redis_is_full_is_507_not_503(client, monkeypatch):
    """A worker's heartbeat is a write, which a full Redis refuses: the answer is that the store is full."""

    async def full(redis):
        return MemoryInfo("noeviction", maxmemory=1000, used=1000)

    monkeypatch.setattr(dispatch, "read_memory_info", full)
    response = await client.post("/v1/embeddings", json={"input": "hi", "model": "fake-model"})
    assert_openai_error(response, 507, "insufficient_storage")


async def test_unknown_route_is_openai_shaped_404(client):
    assert_openai_error(await client.get("/v1/nothing"), 404, "not_found")


async def test_wrong_method_is_openai_shaped(client):
    assert_openai_error(await client.get("/v1/embeddings"), 405, "method_not_allowed")


async def test_health_and_readiness(client, worker):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] == 1


async def test_not_ready_without_workers(client):
    assert_openai_error(await client.get("/readyz"), 503, "service_unavailable")


async def test_models_lists_configured_and_loaded_models(client, worker):
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["fake-model"]
    assert all(m["object"] == "model" for m in body["data"])


async def test_openapi_documents_the_request_body(client):
    schema = (await client.get("/openapi.json")).json()
    body = schema["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"input", "model", "encoding_format", "dimensions"} <= set(body["properties"])


@contextlib.asynccontextmanager
async def served_by_a_silent_worker(server, settings):
    """A client of the app, and the Redis it uses, with a worker that is alive but never answers."""
    app = create_app(settings, redis_factory=fake_redis_factory(server))
    redis = fake_redis_factory(server)(None)
    await record_heartbeat(redis, WorkerInfo("silent", "cpu", [], 0), ttl_s=60)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        yield client, redis
    await redis.aclose()


async def test_no_result_in_time_is_504(server):
    settings = Settings(_env_file=None, request_timeout_s=0.3, allow_any_model=True)
    async with served_by_a_silent_worker(server, settings) as (client, _):
        response = await client.post("/v1/embeddings", json={"input": "x", "model": "m"})
    assert_openai_error(response, 504, "timeout")


async def test_requests_over_the_backlog_bound_are_429_and_leave_nothing_queued(server):
    settings = Settings(_env_file=None, max_queued_texts=3, request_timeout_s=0.3, embed_models=["m"])
    async with served_by_a_silent_worker(server, settings) as (client, redis):
        # sent together: all three go to Redis in one script call, which admits the first only (2 of 3 texts)
        responses = await asyncio.gather(
            *[client.post("/v1/embeddings", json={"input": ["a", "b"], "model": "m"}) for _ in range(3)]
        )
        assert await redis.zcard(keys.SYNC_QUEUE) == 0  # the timed-out job was withdrawn
        assert int(await redis.get(keys.QUEUED_TEXTS) or 0) == 0
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [429, 429, 504]  # the silent worker never answers the admitted one
    assert_openai_error(next(r for r in responses if r.status_code == 429), 429, "rate_limit_exceeded")


async def test_metrics_move_when_requests_are_served(client, worker):
    def served() -> float:
        labels = {"route": "/v1/embeddings", "status": "200"}
        return REGISTRY.get_sample_value("embeddings_api_requests_total", labels) or 0.0

    before = served()
    await client.post("/v1/embeddings", json={"input": "x", "model": "fake-model"})
    await client.post("/v1/embeddings", json={"input": "", "model": "fake-model"})
    assert served() == before + 1
    text = (await client.get("/metrics")).text
    assert 'embeddings_api_errors_total{kind="invalid_request"}' in text
    assert "embeddings_queue_jobs" in text and "embeddings_live_workers 1.0" in text


async def test_errors_carry_the_request_id_into_the_logs(client, caplog):
    caplog.set_level("INFO", logger="api.errors")
    response = await client.post("/v1/embeddings", json={"input": "", "model": "fake-model"})
    request_id = response.headers["x-request-id"]
    assert f"request {request_id} answered 400 invalid_request" in caplog.text

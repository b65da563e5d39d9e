"""API keys, CORS and key-scoped jobs, in-process over fakeredis."""

import hashlib

import fakeredis
import httpx
import pytest

from api.auth import KeyRing
from api.main import create_app
from shared.settings import Settings
from tests.fakes import fake_redis_factory, served_app

KEY_A = "sk-alpha-0123456789"
KEY_B = "sk-bravo-9876543210"


@pytest.fixture
def server():
    return fakeredis.FakeServer()


@pytest.fixture
async def secured(server, tmp_path):
    hashes = tmp_path / "keys.sha256"
    hashes.write_text(f"# key B\n{hashlib.sha256(KEY_B.encode()).hexdigest()}\n")
    settings = Settings(
        _env_file=None, embed_models=["fake-model"], api_keys=[KEY_A], api_key_hashes_file=hashes, protect_metrics=True
    )
    async with served_app(settings, server) as (_, client):
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


BODY = {"model": "fake-model", "input": "hello"}


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": KEY_A}, {"Authorization": "Basic abc"}])
async def test_v1_routes_need_a_valid_key(secured, headers):
    for method, path in (("POST", "/v1/embeddings"), ("GET", "/v1/models"), ("GET", "/v1/embeddings/jobs/x")):
        response = await secured.request(method, path, json=BODY, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
    assert (await secured.get("/metrics", headers=headers)).status_code == 401


async def test_keys_from_settings_and_from_the_hash_file_both_work(secured):
    for key in (KEY_A, KEY_B):
        assert (await secured.post("/v1/embeddings", json=BODY, headers=bearer(key))).status_code == 200
        assert (await secured.get("/metrics", headers=bearer(key))).status_code == 200


async def test_health_and_readiness_stay_open(secured):
    assert (await secured.get("/healthz")).status_code == 200
    assert (await secured.get("/readyz")).status_code == 200


async def test_a_job_belongs_to_the_key_that_created_it(secured):
    created = await secured.post(
        "/v1/embeddings/jobs", json={"model": "fake-model", "input": ["a"]}, headers=bearer(KEY_A)
    )
    job_id = created.json()["id"]
    assert (await secured.get(f"/v1/embeddings/jobs/{job_id}", headers=bearer(KEY_A))).status_code == 200
    for method, path in (("GET", ""), ("GET", "/result"), ("POST", "/cancel")):
        response = await secured.request(method, f"/v1/embeddings/jobs/{job_id}{path}", headers=bearer(KEY_B))
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


async def test_idempotency_keys_are_scoped_by_api_key(secured):
    body = {"model": "fake-model", "input": ["a"]}
    a = await secured.post("/v1/embeddings/jobs", json=body, headers={**bearer(KEY_A), "Idempotency-Key": "same"})
    b = await secured.post("/v1/embeddings/jobs", json=body, headers={**bearer(KEY_B), "Idempotency-Key": "same"})
    assert a.json()["id"] != b.json()["id"]


def test_keys_are_compared_as_digests():
    ring = KeyRing({hashlib.sha256(b"k1").digest()})
    assert ring.enabled and ring.owner_of("k1") == hashlib.sha256(b"k1").hexdigest()[:16]
    assert ring.owner_of("k2") is None
    assert not KeyRing(set()).enabled


async def cors_headers(server, **settings) -> httpx.Headers:
    app = create_app(Settings(_env_file=None, **settings), redis_factory=fake_redis_factory(server))
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        return (await client.options("/v1/embeddings", headers=preflight)).headers


async def test_cors_is_off_unless_configured(server):
    assert "access-control-allow-origin" not in await cors_headers(server)
    allowed = await cors_headers(server, cors_allow_origins=["https://app.example"])
    assert allowed["access-control-allow-origin"] == "https://app.example"

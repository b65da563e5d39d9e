"""``api.pooling.routes``: vLLM's ``/pooling`` and TEI's ``/embed_all`` in process, over fakeredis, answered by the
real ``TaskService`` (``worker.sync_jobs``, ``worker.multivector_pipeline``) on the fixture multi-vector model:
the answers' shapes, the sole-model default of TEI's route, and what the schemas refuse."""

import asyncio
import base64
import contextlib

import fakeredis
import httpx
import numpy as np
import pytest
from sentence_transformers import MultiVectorEncoder

from api.main import create_app
from shared.clock import now_ms
from shared.job_queue import JobQueue
from shared.settings import Settings
from shared.workers import WorkerInfo, record_heartbeat
from tests.fakes import fake_redis_factory, running
from tests.model_fixtures import MULTIVECTOR_MODEL, save_multivector
from worker.models.multivector_encoder import MultiVectorTokenEncoder
from worker.models.registry import ModelRegistry
from worker.service import TaskService


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> MultiVectorEncoder:
    path = save_multivector(tmp_path_factory.mktemp("multivector"))[MULTIVECTOR_MODEL]
    return MultiVectorEncoder(str(path), device="cpu")


async def serve(redis, models) -> None:
    await record_heartbeat(redis, WorkerInfo("mv", "cpu", list(models), 0), ttl_s=60)
    registry = ModelRegistry(models.__getitem__, max_loaded=4, failure_ttl_s=60, max_batch_size=4)
    service = TaskService(registry, redis, "mv", max_attempts=2)
    queue = JobQueue.sync(redis)
    try:
        while True:
            claimed = await queue.claim(64, 1024, 10_000, now_ms())
            if not claimed:
                await asyncio.sleep(0.005)
                continue
            await asyncio.gather(*(service.handle(job.job_id, job.message, job.attempt) for job in claimed))
    finally:
        await registry.close()


@contextlib.asynccontextmanager
async def app_serving(settings, models):
    factory = fake_redis_factory(fakeredis.FakeServer())
    app = create_app(settings, redis_factory=factory)
    worker_redis = factory(None)
    async with (
        app.router.lifespan_context(app),
        running(serve(worker_redis, models)),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        yield client
    await worker_redis.aclose()


@pytest.fixture
async def client(library):
    settings = Settings(_env_file=None, embed_models=["mv"])
    async with app_serving(settings, {"mv": MultiVectorTokenEncoder(library)}) as client:
        yield client


async def test_pooling_answers_vllms_shape(client, library):
    response = await client.post("/pooling", json={"model": "mv", "input": "hi there", "task": "token_embed"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"id", "object", "created", "model", "data", "usage"}
    assert answer["usage"] == {"prompt_tokens": 4, "total_tokens": 4, "completion_tokens": 0}
    assert answer["data"][0]["index"] == 0 and answer["data"][0]["object"] == "pooling"
    np.testing.assert_allclose(answer["data"][0]["data"], library.encode("hi there").numpy(), atol=1e-5)
    packed = await client.post("/pooling", json={"model": "mv", "input": ["hi"], "encoding_format": "base64"})
    rows = np.frombuffer(base64.b64decode(packed.json()["data"][0]["data"]), dtype="<f4").reshape(-1, 128)
    np.testing.assert_allclose(rows, library.encode("hi").numpy(), atol=1e-5)


async def test_embed_all_answers_teis_nested_lists_for_the_sole_model(client, library):
    response = await client.post("/embed_all", json={"inputs": ["hi, you!"], "input_type": "document"})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()[0], library.encode_document("hi, you!").numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "mv", "input": ""},
        {"model": "mv", "input": []},
        {"model": "mv", "input": [[1, 2]]},
        {"model": "mv", "input": "a", "task": "classify"},
        {"model": "mv", "input": "a", "encoding_format": "binary"},
        {"model": "mv", "input": "a", "embedding_mode": "query", "input_type": "document"},
        {"model": "mv", "input": "a", "dimensions": 8},
        {"model": "mv", "input": "a", "prompt_name": "nope"},
    ],
)
async def test_pooling_refuses_what_it_does_not_take(client, body):
    response = await client.post("/pooling", json=body)
    assert response.status_code == 400, response.text
    assert "error" in response.json()

"""``api.pooling.routes``: vLLM's ``/pooling`` and TEI's ``/embed_all`` in process, over fakeredis, answered by the
real ``TaskService`` (``worker.sync_jobs``, ``worker.multivector_pipeline``) on the fixture multi-vector model:
the answers' shapes, the sole-model default of TEI's route, and what the schemas refuse."""

import base64

import numpy as np
import pytest
from sentence_transformers import MultiVectorEncoder

from shared.settings import Settings
from tests.fakes import served_app
from tests.model_fixtures import MULTIVECTOR_MODEL, save_multivector
from worker.models.multivector_encoder import MultiVectorTokenEncoder


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> MultiVectorEncoder:
    path = save_multivector(tmp_path_factory.mktemp("multivector"))[MULTIVECTOR_MODEL]
    return MultiVectorEncoder(str(path), device="cpu")


@pytest.fixture
async def client(library):
    settings = Settings(_env_file=None, embed_models=["mv"])
    async with served_app(settings, models={"mv": MultiVectorTokenEncoder(library)}) as (_, client):
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

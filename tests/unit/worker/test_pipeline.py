"""``worker.pipeline``: tokenize, batch and encode a job, with no Redis anywhere (a stub model)."""

import numpy as np
import pytest

from shared.errors import ErrorKind, ServiceError
from shared.openai_json import float_text_bytes
from tests.fakes import Loader, fake_vector, make_embed_chunk, make_embed_task, make_registry
from worker.pipeline import EmbeddingPipeline


@pytest.fixture
async def pipeline():
    registry = make_registry(Loader(failing={"missing"}))
    yield EmbeddingPipeline(registry, max_tokens=6)
    await registry.close()


async def test_a_job_is_embedded_in_input_order_with_its_tokens_counted(pipeline):
    embedded = await pipeline.embed(make_embed_task(inputs=["abc", "de"], dimensions=2))
    assert embedded.vectors.tolist() == [fake_vector("abc")[:2], fake_vector("de")[:2]]
    assert embedded.prompt_tokens == 2 and pipeline.largest_batch[0] >= 2


async def test_the_job_limits_are_the_pipelines(pipeline):
    with pytest.raises(ServiceError) as too_many:
        await pipeline.embed(make_embed_task(input_kind="tokens", inputs=[[1] * 7]))
    assert too_many.value.kind is ErrorKind.INVALID_REQUEST
    with pytest.raises(ServiceError) as too_wide:
        await pipeline.embed(make_embed_task(dimensions=5))
    assert too_wide.value.param == "dimensions"
    with pytest.raises(ServiceError) as unknown:
        await pipeline.embed(make_embed_task(model="missing"))
    assert unknown.value.kind is ErrorKind.MODEL_NOT_FOUND


async def test_a_batch_chunks_requests_each_end_alone_and_are_measured_for_their_file(pipeline):
    job = make_embed_chunk(parent_job="batch_1", input_kind="tokens", inputs=[[1, 2], [150], [3], [4]], parts=[1, 1, 2])
    vectors, parts = await pipeline.embed_parts(job, job.parts)
    assert vectors is not None and vectors.shape == (3, 4)  # the refused request has no rows
    assert parts[1].error is not None and parts[1].error.param == "input"
    assert [part.float_text_bytes for part in parts] == [
        float_text_bytes(vectors[:1]),
        None,
        float_text_bytes(vectors[1:]),
    ]
    assert np.all(np.isfinite(vectors))

"""The official openai Python client against the real stack."""

import numpy as np
import openai
import pytest

from tests.integration.conftest import MODEL, TEXTS, assert_same_vectors, unit_rows


@pytest.fixture
def openai_client(base_url):
    with openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client


def as_array(response) -> np.ndarray:
    return np.array([item.embedding for item in response.data], dtype=np.float64)


def test_default_base64(openai_client, reference):
    response = openai_client.embeddings.create(model=MODEL, input=TEXTS)
    assert_same_vectors(as_array(response), reference(TEXTS))
    assert response.usage.prompt_tokens > 0


def test_float(openai_client, reference):
    response = openai_client.embeddings.create(model=MODEL, input=TEXTS[:2], encoding_format="float")
    assert_same_vectors(as_array(response), reference(TEXTS[:2]))


def test_dimensions(openai_client, reference):
    response = openai_client.embeddings.create(model=MODEL, input=TEXTS[:2], dimensions=128)
    vectors = as_array(response)
    assert vectors.shape == (2, 128)
    assert_same_vectors(vectors, unit_rows(reference(TEXTS[:2])[:, :128]))


def test_errors_surface_as_openai_exceptions(openai_client):
    with pytest.raises(openai.NotFoundError) as info:
        openai_client.embeddings.create(model="no-such-org/no-such-model", input="x")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        openai_client.embeddings.create(model=MODEL, input="")

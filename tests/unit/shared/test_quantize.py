import base64

import numpy as np
import orjson
import pytest
from sentence_transformers.util import quantize_embeddings

from shared.openai_json import data_array
from shared.quantize import quantize


@pytest.mark.parametrize("output_dtype", ["binary", "ubinary"])
def test_bits_are_quantize_embeddings(output_dtype):
    vectors = np.random.default_rng(3).standard_normal((5, 384)).astype(np.float32)
    vectors[0, :8] = 0.0  # zero is not above zero: its bit is clear
    expected = quantize_embeddings(vectors, output_dtype)
    actual = quantize(vectors, output_dtype)
    assert actual.dtype == expected.dtype
    assert np.array_equal(actual, expected)


def test_a_row_whose_dimensions_are_not_a_multiple_of_eight_is_padded_with_clear_bits():
    vectors = np.ones((2, 12), dtype=np.float32)
    assert quantize(vectors, "ubinary").tolist() == [[255, 240], [255, 240]]
    assert quantize(vectors, "binary").tolist() == [[127, 112], [127, 112]]


def test_float_is_unchanged():
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert quantize(vectors, "float") is vectors


@pytest.mark.parametrize("output_dtype", ["binary", "ubinary"])
def test_bits_render_as_integers_or_base64_of_their_bytes(output_dtype):
    vectors = np.random.default_rng(4).standard_normal((3, 16)).astype(np.float32)
    expected = quantize_embeddings(vectors, output_dtype)
    as_ints = orjson.loads(data_array(vectors, "float", output_dtype))
    assert [item["embedding"] for item in as_ints] == expected.tolist()
    as_base64 = orjson.loads(data_array(vectors, "base64", output_dtype))
    decoded = [np.frombuffer(base64.b64decode(item["embedding"]), dtype=expected.dtype) for item in as_base64]
    assert np.array_equal(np.stack(decoded), expected)

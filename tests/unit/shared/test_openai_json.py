"""``shared.openai_json``: the ``data`` array, and its length measured without rendering the vectors."""

import numpy as np
import orjson
import pytest

from shared.openai_json import data_array, data_array_bytes, float_text_bytes


@pytest.mark.parametrize("count", [0, 1, 3, 12])
@pytest.mark.parametrize("dimensions", [1, 2, 3, 32, 384])
@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_the_measured_length_is_the_rendered_length(count, dimensions, encoding_format):
    rng = np.random.default_rng(count * 1000 + dimensions)
    scales = np.float32(10.0) ** rng.integers(-8, 3, size=(count, dimensions))
    vectors = (rng.standard_normal((count, dimensions)) * scales).astype("<f4")
    if count:
        vectors[0, 0] = 0.0
    measured = data_array_bytes(count, dimensions, encoding_format, float_text_bytes(vectors))
    assert measured == len(data_array(vectors, encoding_format))


def test_float_text_bytes_counts_each_rows_json():
    rows = np.array([[0.5, -1.25], [3.0, 1e-7]], dtype="<f4")
    assert float_text_bytes(rows) == sum(len(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)) for row in rows)

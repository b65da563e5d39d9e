"""``shared.sparse``: sparse rows as TEI and ``/v1/embeddings`` answer them, and as a job's chunk stores them."""

import numpy as np
import orjson

from shared.chunks import encode_vectors
from shared.sparse import decode_sparse, encode_sparse, is_sparse, sparse_data_array, sparse_rows, tei_sparse_body


def rows() -> list[tuple[np.ndarray, np.ndarray]]:
    dense = np.zeros((3, 10), dtype=np.float32)
    dense[0, [7, 2]] = [0.5, 1.25]
    dense[2, 9] = 0.1
    return sparse_rows(dense)


def test_rows_are_the_nonzeros_by_ascending_index():
    first, empty, last = rows()
    assert first[0].tolist() == [2, 7] and first[1].tolist() == [1.25, 0.5]
    assert first[0].dtype == np.int32 and first[1].dtype == np.float32
    assert len(empty[0]) == 0 and last[0].tolist() == [9]


def test_tei_shape():
    body = orjson.loads(tei_sparse_body(rows()))
    assert body == [[{"index": 2, "value": 1.25}, {"index": 7, "value": 0.5}], [], [{"index": 9, "value": 0.1}]]
    assert b'"value":0.1}' in tei_sparse_body(rows())  # float32 written as float32, not 0.10000000149011612


def test_v1_embeddings_items():
    items = orjson.loads(sparse_data_array(rows()))
    assert items[0] == {"object": "sparse_embedding", "index": 0, "indices": [2, 7], "values": [1.25, 0.5]}
    assert items[1]["indices"] == [] and items[2]["index"] == 2


def test_stored_rows_come_back_and_take_what_they_hold():
    stored = encode_sparse(rows())
    assert is_sparse(stored)
    assert len(stored) == 8 + 4 * 3 + 8 * 3  # marker, a count a row, an index and a value a nonzero
    back = decode_sparse(stored, 3)
    for (indices, values), (want_indices, want_values) in zip(back, rows(), strict=True):
        assert indices.tolist() == want_indices.tolist() and values.tolist() == want_values.tolist()
    assert decode_sparse(encode_sparse([]), 0) == []


def test_dense_chunks_are_not_taken_for_sparse_ones():
    dense = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    assert not is_sparse(encode_vectors(dense))
    assert not is_sparse(encode_vectors(np.zeros((2, 3), dtype=np.float32)))

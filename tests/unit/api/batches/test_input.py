"""Reading and checking a batch input file, and cutting it into chunks."""

import json

import pytest

from api.batches.input import Line, read_lines, validate
from api.batches.plan import chunk_starts
from api.embeddings.options import EmbedOptions
from shared.errors import ErrorKind
from shared.settings import Settings

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def settings(**overrides) -> Settings:
    return Settings(_env_file=None, **overrides)


def line(custom_id: str, body: dict | None = None, **fields) -> str:
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/embeddings",
            "body": body or {"model": MODEL, "input": "x"},
            **fields,
        }
    )


async def segments_of(data: bytes, size: int):
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("segment", [1, 7, 1 << 20])
async def test_lines_are_read_whole_across_segments_and_numbered_as_in_the_file(segment):
    data = "\n".join([line("a"), "", line("b", {"model": MODEL, "input": ["p", "q"]}), line("c")]).encode()
    read = [item async for group in read_lines(segments_of(data, segment), settings()) for item in group]
    assert [(item.number, item.custom_id, item.inputs) for item in read] == [
        (1, "a", ["x"]),
        (3, "b", ["p", "q"]),
        (4, "c", ["x"]),
    ]


async def test_what_fails_the_file_and_what_fails_one_request():
    rows = [
        line("a"),
        "[1, 2]",
        line("b", {"model": MODEL, "input": []}),  # the route would answer 400: this request fails alone
        line("a"),
        line("c", method="GET"),
        line("d", url="/v1/completions"),
        line("e", {"model": "other/model", "input": "x"}),
        line("f", {"input": "x"}),
        line("", None),
    ]
    found = await validate(segments_of("\n".join(rows).encode(), 64), settings(allow_any_model=True))
    assert [(error.line, error.code, error.param) for error in found.errors] == [
        (2, "invalid_request", None),
        (4, "duplicate_custom_id", "custom_id"),
        (5, "invalid_request", "method"),
        (6, "invalid_url", "url"),
        (7, "mismatched_model", "body.model"),
        (8, "invalid_request", "body.model"),
        (9, "invalid_request", "custom_id"),
    ]
    assert (found.requests, found.inputs, found.model) == (4, 3, MODEL)  # a, b, a again, e
    assert found.shapes[1] == (None, 0)  # the request with an empty input: failed already, no inputs


async def test_a_model_this_deployment_does_not_serve_fails_the_file():
    found = await validate(segments_of(line("a", {"model": "not/served", "input": "x"}).encode(), 100), settings())
    assert [(error.line, error.code) for error in found.errors] == [(1, "model_not_found")]


async def test_limits_name_the_first_line_over_them():
    rows = "\n".join(line(str(i), {"model": MODEL, "input": ["x", "y"]}) for i in range(6)).encode()
    found = await validate(segments_of(rows, 50), settings(max_batch_requests=5, max_batch_inputs=7))
    assert [(error.line, error.code) for error in found.errors] == [(4, "too_many_inputs"), (6, "too_many_requests")]


async def test_an_empty_file_and_a_line_without_end():
    empty = await validate(segments_of(b"\n \n", 10), settings())
    assert [error.code for error in empty.errors] == ["empty_file"]
    long = await validate(segments_of(b"x" * 5000, 1000), settings(max_body_bytes=2048))
    assert [(error.line, error.code) for error in long.errors] == [(1, "line_too_long")]


async def test_errors_beyond_the_reported_ones_are_counted():
    found = await validate(segments_of(b"nope\n" * 150, 1 << 20), settings())
    assert len(found.errors) == 100 and found.error_count == 150


async def test_a_refused_body_keeps_the_routes_error():
    data = line("a", {"model": MODEL, "input": "x", "dimensions": 0}).encode()
    [parsed] = [item async for group in read_lines(segments_of(data, 100), settings()) for item in group]
    assert isinstance(parsed, Line) and parsed.request is None
    assert (parsed.error.kind, parsed.error.param) == (ErrorKind.INVALID_REQUEST, "dimensions")


def test_chunks_hold_whole_requests_of_one_kind():
    plain = EmbedOptions("m", "text", None, True, None, None, None)
    cut = EmbedOptions("m", "text", 64, True, None, None, None)
    shapes = [(plain, 2), (plain, 2), (plain, 1), (cut, 1), (None, 0), (None, 0), (plain, 9), (plain, 1)]
    # size 4: [0, 1] hold 4; 2 starts anew; a new option; failed requests together; 9 alone (larger than a chunk)
    assert chunk_starts(shapes, 4) == [0, 2, 3, 4, 6, 7]
    assert chunk_starts([], 4) == []

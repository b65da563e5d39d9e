"""The OpenAI Batch API over the real stack, driven by the official ``openai`` client as its users write it."""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import numpy as np
import openai
import pytest

from tests.integration.conftest import (
    MODEL,
    TEXTS,
    assert_same_vectors,
    cosines,
    post_all,
    unit_rows,
    vectors_of,
    wait_until,
)

TERMINAL = ("completed", "failed", "expired", "cancelled")
LONG_TEXT = " ".join(["a sentence that goes on and on about embeddings"] * 80)  # far over MiniLM's 256 tokens


def jsonl(bodies: list[dict], **line_fields) -> bytes:
    lines = [
        {"custom_id": f"request-{i}", "method": "POST", "url": "/v1/embeddings", "body": body, **line_fields}
        for i, body in enumerate(bodies)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def run_batch(client: openai.OpenAI, data: bytes, timeout_s: float = 120):
    uploaded = client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    deadline = time.monotonic() + timeout_s
    while (batch := client.batches.retrieve(batch.id)).status not in TERMINAL:
        assert time.monotonic() < deadline, batch
        time.sleep(0.1)
    return batch


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def embeddings_of(body: dict) -> np.ndarray:
    data = sorted(body["data"], key=lambda item: item["index"])
    rows = [
        np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        if isinstance(item["embedding"], str)
        else np.array(item["embedding"], dtype=np.float32)
        for item in data
    ]
    return np.array(rows, dtype=np.float64)


@pytest.fixture
def openai_client(base_url):
    with openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def mixed_bodies(count: int) -> list[dict]:
    """Single and several inputs, float and base64, with and without dimensions and a prompt option, and a few
    requests that must fail alone (two refused by the API's checks, one by the worker, next to ones that pass)."""
    bodies: list[dict] = []
    for i in range(count):
        text = f"{TEXTS[i % len(TEXTS)]} (variant {i})"
        body: dict = {"model": MODEL, "input": text if i % 3 else [text, f"and a second text {i}", TEXTS[i % 5]]}
        if i % 4 == 1:
            body["encoding_format"] = "base64"
        if i % 7 == 2:
            body["dimensions"] = 96
        bodies.append(body)
    bodies[10] = {"model": MODEL, "input": ""}  # an empty input: the route says 400
    bodies[11] = {"model": MODEL, "input": "fine", "dimensions": 0}
    bodies[12] = {"model": MODEL, "input": "fine", "encodin_format": "base64"}  # a typo: refused, not ignored
    # three requests that refuse to be cut, in one chunk: the long one fails at the worker, the others pass
    bodies[40] = {"model": MODEL, "input": "short and fine", "truncate": False}
    bodies[41] = {"model": MODEL, "input": LONG_TEXT, "truncate": False}
    bodies[42] = {"model": MODEL, "input": ["also fine", "and this"], "truncate": False}
    return bodies


def test_the_sdk_batch_flow_gives_the_sync_apis_vectors_in_input_order(openai_client, base_url, reference):
    bodies = mixed_bodies(300)
    batch = run_batch(openai_client, jsonl(bodies))
    assert batch.status == "completed" and batch.errors is None
    assert batch.request_counts.total == 300
    assert (batch.request_counts.completed, batch.request_counts.failed) == (296, 4)
    assert batch.completed_at >= batch.created_at and batch.in_progress_at is not None

    output = lines_of(openai_client, batch.output_file_id)
    failed = lines_of(openai_client, batch.error_file_id)
    failed_ids = {"request-10", "request-11", "request-12", "request-41"}
    assert [line["custom_id"] for line in failed] == sorted(failed_ids, key=lambda c: int(c.split("-")[1]))
    assert [line["custom_id"] for line in output] == [
        f"request-{i}" for i in range(300) if f"request-{i}" not in failed_ids
    ]
    # more inputs than one chunk holds (256), and options that change every few requests: many chunks, in order
    assert sum(len(body["input"]) if isinstance(body["input"], list) else 1 for body in bodies) > 256

    sync = post_all(base_url, [bodies[int(line["custom_id"].split("-")[1])] for line in output])
    total_tokens = 0
    for line, answer in zip(output, sync, strict=True):
        index = int(line["custom_id"].split("-")[1])
        response = line["response"]
        assert line["error"] is None and response["status_code"] == 200 and line["id"].startswith("batch_req_")
        body = response["body"]
        expected = answer.json()
        assert body["model"] == MODEL and body["usage"] == expected["usage"]
        total_tokens += body["usage"]["prompt_tokens"]
        wanted_format = bodies[index].get("encoding_format", "float")
        assert all(isinstance(item["embedding"], str) == (wanted_format == "base64") for item in body["data"])
        actual, answered = embeddings_of(body), embeddings_of(expected)
        assert actual.shape == answered.shape == (actual.shape[0], bodies[index].get("dimensions", 384))
        assert cosines(actual, answered).min() >= 0.999999 and np.abs(actual - answered).max() <= 1e-5
    assert batch.usage.input_tokens == total_tokens

    # and SentenceTransformer.encode's, as its users call it (normalized; a `dimensions` cut made unit again)
    for line in output:
        body = bodies[int(line["custom_id"].split("-")[1])]
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        expected = reference(texts)
        if "dimensions" in body:
            expected = unit_rows(expected[:, : body["dimensions"]])
        assert_same_vectors(embeddings_of(line["response"]["body"]), expected)

    by_id = {line["custom_id"]: line for line in failed}
    for custom_id in failed_ids:
        response = by_id[custom_id]["response"]
        assert response["status_code"] == 400 and response["body"]["error"]["type"] == "invalid_request_error"
    assert by_id["request-41"]["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert by_id["request-11"]["response"]["body"]["error"]["param"] == "dimensions"
    assert by_id["request-12"]["response"]["body"]["error"]["param"] == "encodin_format"


def test_files_are_listed_read_back_and_deleted(openai_client):
    data = jsonl([{"model": MODEL, "input": text} for text in TEXTS[:3]])
    batch = run_batch(openai_client, data)
    assert openai_client.files.content(batch.input_file_id).read() == data
    uploaded = openai_client.files.retrieve(batch.input_file_id)
    assert (uploaded.purpose, uploaded.bytes, uploaded.filename) == ("batch", len(data), "requests.jsonl")
    output = openai_client.files.retrieve(batch.output_file_id)
    assert output.purpose == "batch_output" and output.bytes == len(openai_client.files.content(output.id).read())
    listed = [item.id for item in openai_client.files.list()]
    assert batch.output_file_id in listed and batch.input_file_id in listed
    assert batch.error_file_id is None
    assert batch.id in [item.id for item in openai_client.batches.list()]

    assert openai_client.files.delete(batch.input_file_id).deleted
    with pytest.raises(openai.NotFoundError):
        openai_client.files.retrieve(batch.input_file_id)
    assert openai_client.files.delete(batch.output_file_id).deleted
    with pytest.raises(openai.NotFoundError):
        openai_client.files.content(batch.output_file_id)
    assert openai_client.batches.retrieve(batch.id).output_file_id is None


def test_a_file_with_problems_fails_validation_naming_its_lines(openai_client):
    good = {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": MODEL, "input": "x"}}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps(good),  # the same custom_id again
        json.dumps({**good, "custom_id": "b", "url": "/v1/chat/completions"}),
        json.dumps({**good, "custom_id": "c", "body": {"model": "another/model", "input": "x"}}),
        "",
        json.dumps({**good, "custom_id": "d", "method": "GET"}),
    ]
    batch = run_batch(openai_client, "\n".join(lines).encode())
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.output_file_id is None and batch.error_file_id is None
    found = [(error.line, error.code) for error in batch.errors.data]
    assert found == [
        (2, "invalid_json_line"),
        (3, "duplicate_custom_id"),
        (4, "invalid_url"),
        (5, "mismatched_model"),
        (7, "invalid_request"),
    ]
    assert all(error.message for error in batch.errors.data)


def test_what_the_batch_routes_refuse(openai_client, base_url):
    with pytest.raises(openai.BadRequestError):
        openai_client.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        openai_client.batches.create(input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h")
    uploaded = openai_client.files.create(
        file=("x.jsonl", io.BytesIO(jsonl([{"model": MODEL, "input": "x"}]))), purpose="batch"
    )
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert info.value.body["param"] == "endpoint"
    made_now = "batch_" + f"{int(time.time() * 1000):012x}" + "0" * 32
    for missing in ("batch_nope", made_now):
        with pytest.raises(openai.NotFoundError):
            openai_client.batches.retrieve(missing)
    empty = openai_client.files.create(file=("empty.jsonl", io.BytesIO(b"\n\n")), purpose="batch")
    batch = openai_client.batches.create(input_file_id=empty.id, endpoint="/v1/embeddings", completion_window="24h")
    assert batch.status == "failed" and batch.errors.data[0].code == "empty_file"


ROUTES_BY_KIND = {
    "job": [
        ("GET", "/v1/embeddings/jobs/{}"),
        ("GET", "/v1/embeddings/jobs/{}/result"),
        ("POST", "/v1/embeddings/jobs/{}/cancel"),
        ("DELETE", "/v1/embeddings/jobs/{}"),
    ],
    "batch": [("GET", "/v1/batches/{}"), ("POST", "/v1/batches/{}/cancel")],
    "file": [("GET", "/v1/files/{}"), ("GET", "/v1/files/{}/content"), ("DELETE", "/v1/files/{}")],
}


def test_an_id_on_a_route_of_another_kind_is_a_404_that_leaves_it_alone(openai_client, base_url):
    batch = run_batch(openai_client, jsonl([{"model": MODEL, "input": "mine"}]))
    with httpx.Client(base_url=base_url, timeout=60) as http:
        job = http.post("/v1/embeddings/jobs", json={"model": MODEL, "input": ["also mine"]}).json()["id"]
        ids = [("job", job), ("batch", batch.id), ("file", batch.input_file_id), ("file", batch.output_file_id)]
        for kind, item_id in ids:
            for route_kind, routes in ROUTES_BY_KIND.items():
                for method, route in routes if route_kind != kind else ():
                    response = http.request(method, route.format(item_id))
                    assert response.status_code == 404, (method, route, item_id, response.text)
                    assert response.json()["error"]["code"] == "not_found"
            if kind != "file":
                with pytest.raises(openai.NotFoundError):
                    openai_client.batches.create(
                        input_file_id=item_id, endpoint="/v1/embeddings", completion_window="24h"
                    )
        assert http.get(f"/v1/embeddings/jobs/{job}").status_code == 200
    assert openai_client.batches.retrieve(batch.id).status == "completed"
    assert openai_client.files.retrieve(batch.output_file_id).id == batch.output_file_id
    assert len(lines_of(openai_client, batch.output_file_id)) == 1


# A stack of its own: two keys, small limits, one request per chunk, so a cancel finds work still queued


KEYS = ("sk-batch-owner-5a1c", "sk-batch-other-9e3d")


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory):
    from tests.stack import running_stack

    env = {
        "API_KEYS": ",".join(KEYS),
        "MAX_BATCH_REQUESTS": "120",
        "MAX_BATCH_INPUTS": "130",
        "JOB_CHUNK_SIZE": "1",
        "TOKEN_IDS": "model",
    }
    with running_stack(tmp_path_factory.mktemp("batches"), **env) as stack:
        yield stack


def client_for(stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_another_keys_batches_and_files_are_not_there(keyed_stack):
    with client_for(keyed_stack, KEYS[0]) as owner, client_for(keyed_stack, KEYS[1]) as other:
        batch = run_batch(owner, jsonl([{"model": MODEL, "input": "mine"}]))
        for call in (
            lambda: other.batches.retrieve(batch.id),
            lambda: other.batches.cancel(batch.id),
            lambda: other.files.retrieve(batch.input_file_id),
            lambda: other.files.content(batch.input_file_id),
            lambda: other.files.content(batch.output_file_id),
            lambda: other.files.delete(batch.input_file_id),
            lambda: other.batches.create(
                input_file_id=batch.input_file_id, endpoint="/v1/embeddings", completion_window="24h"
            ),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        assert batch.id not in [item.id for item in other.batches.list()]
        assert batch.input_file_id not in [item.id for item in other.files.list()]
        assert owner.files.retrieve(batch.input_file_id).id == batch.input_file_id


def test_over_the_limits_the_batch_fails_validation(keyed_stack):
    with client_for(keyed_stack, KEYS[0]) as client:
        too_many = run_batch(client, jsonl([{"model": MODEL, "input": "x"}] * 121))
        assert too_many.status == "failed" and too_many.errors.data[0].code == "too_many_requests"
        assert too_many.errors.data[0].line == 121
        inputs = run_batch(client, jsonl([{"model": MODEL, "input": ["x", "y"]}] * 70))
        assert inputs.status == "failed" and inputs.errors.data[0].code == "too_many_inputs"
        assert inputs.errors.data[0].line == 66


def test_cancel_stops_queued_requests_and_keeps_what_finished(keyed_stack):
    bodies = [{"model": MODEL, "input": [LONG_TEXT[: 200 + i]] * 1} for i in range(120)]
    with client_for(keyed_stack, KEYS[0]) as client:
        uploaded = client.files.create(file=("r.jsonl", io.BytesIO(jsonl(bodies))), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at is not None
        wait_until(lambda: client.batches.retrieve(batch.id).status == "cancelled", 60, "the cancel to finish")
        done = client.batches.retrieve(batch.id)
        assert done.cancelled_at is not None
        assert done.request_counts.completed + done.request_counts.failed < 120 and done.request_counts.failed == 0
        output = lines_of(client, done.output_file_id)
        errors = lines_of(client, done.error_file_id)
        assert len(output) == done.request_counts.completed
        assert len(output) + len(errors) == 120
        ordered = [int(line["custom_id"].split("-")[1]) for line in output + errors]
        assert sorted(ordered[: len(output)]) == ordered[: len(output)] and sorted(ordered) == list(range(120))
        assert all(line["response"] is None and line["error"]["code"] == "batch_cancelled" for line in errors)
        assert client.batches.cancel(batch.id).status == "cancelled"  # stays as it ended


def test_batches_outlive_the_api_process(keyed_stack):
    with client_for(keyed_stack, KEYS[0]) as client:
        batch = run_batch(client, jsonl([{"model": MODEL, "input": text} for text in TEXTS]))
        before = client.files.content(batch.output_file_id).read()
    keyed_stack.api.terminate()
    keyed_stack.api.wait(15)
    keyed_stack.start_api()
    keyed_stack.wait_ready()
    with client_for(keyed_stack, KEYS[0]) as client:
        assert client.batches.retrieve(batch.id).status == "completed"
        assert client.files.content(batch.output_file_id).read() == before


def test_a_batch_that_outlives_its_window_expires(stack_with):
    stack = stack_with(BATCH_COMPLETION_WINDOW_S="2")
    with client_for(stack, "unused") as client:
        assert vectors_of(
            client.embeddings.create(model=MODEL, input="warm", encoding_format="float").model_dump()
        ).shape == (1, 384)
        stack.workers[0].terminate()
        stack.workers[0].wait(30)
        uploaded = client.files.create(
            file=("r.jsonl", io.BytesIO(jsonl([{"model": MODEL, "input": t} for t in TEXTS]))), purpose="batch"
        )
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
        assert batch.status == "in_progress"
        wait_until(lambda: client.batches.retrieve(batch.id).status == "expired", 10, "the batch to expire")
        stack.start_worker()  # finds the batch's chunks past their deadline, and leaves them
        time.sleep(3)
        expired = client.batches.retrieve(batch.id)
        assert expired.status == "expired" and expired.expired_at == expired.expires_at
        assert expired.request_counts.completed == 0 and expired.output_file_id is None
        errors = lines_of(client, expired.error_file_id)
        assert [line["custom_id"] for line in errors] == [f"request-{i}" for i in range(len(TEXTS))]
        assert all(line["error"]["code"] == "batch_expired" for line in errors)


def test_lists_page_with_after_and_limit_newest_first(openai_client, base_url):
    made = [run_batch(openai_client, jsonl([{"model": MODEL, "input": f"page {i}"}])).id for i in range(3)]
    paged = [batch.id for batch in openai_client.batches.list(limit=1)]  # the client follows `after` page by page
    assert len(paged) == len(set(paged)) and [i for i in paged if i in made] == made[::-1]
    first = openai_client.batches.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    files = [item.id for item in openai_client.files.list(limit=1, order="asc")]
    assert len(files) == len(set(files)) and files == [item.id for item in openai_client.files.list(order="asc")]
    with pytest.raises(openai.BadRequestError):
        openai_client.batches.list(after="batch_nope")

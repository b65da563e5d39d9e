"""One trace per request across the queue, from real processes: the API under uvicorn and a worker with MiniLM,
each exporting its spans with ``opentelemetry-exporter-otlp-json-file`` (configured only by ``OTEL_*``, it writes
OTLP JSON lines to the process's stdout, which the stack keeps in the process's log)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import MODEL, TEXTS, wait_until

spans_in_order = ("POST /v1/embeddings", "queue wait", "embed")
TRACED = {"OTEL_TRACES_EXPORTER": "otlp_json_file", "OTEL_BSP_SCHEDULE_DELAY": "100"}


def exported_spans(log_dir: Path) -> list[dict[str, Any]]:
    """Every span in the stack's logs, each with the ``service`` that exported it."""
    spans = []
    for log in log_dir.glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if not line.startswith('{"resourceSpans"'):
                continue
            for resource_spans in json.loads(line)["resourceSpans"]:
                resource = {a["key"]: a["value"] for a in resource_spans["resource"]["attributes"]}
                service = resource["service.name"]["stringValue"]
                for scope_spans in resource_spans["scopeSpans"]:
                    spans.extend({**span, "service": service} for span in scope_spans["spans"])
    return spans


def attribute(span: dict[str, Any], key: str) -> Any:
    value = next(a["value"] for a in span["attributes"] if a["key"] == key)
    return next(iter(value.values()))


async def _post_traced(base_url: str, count: int) -> list[tuple[str, str, httpx.Response]]:
    """``count`` concurrent requests, each starting its own trace (the client's W3C ``traceparent``)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:

        async def one(i: int) -> tuple[str, str, httpx.Response]:
            trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
            body = {"model": MODEL, "input": [TEXTS[(i + k) % len(TEXTS)] for k in range(4)]}
            headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
            return trace_id, parent_id, await client.post("/v1/embeddings", json=body, headers=headers)

        return await asyncio.gather(*(one(i) for i in range(count)))


def test_each_request_is_one_trace_through_the_api_and_the_worker(stack_with):
    stack = stack_with(**TRACED)
    asyncio.run(_post_traced(stack.base_url, 1))  # the model's first batches are slow ones
    sent = asyncio.run(_post_traced(stack.base_url, 16))
    assert all(response.status_code == 200 for _, _, response in sent)
    wanted = {trace_id for trace_id, _, _ in sent}

    def traces() -> dict[str, list[dict[str, Any]]]:
        by_trace = defaultdict(list)
        for span in exported_spans(stack.log_dir):
            by_trace[span["traceId"]].append(span)
        return by_trace

    wait_until(lambda: all(len(traces()[trace_id]) == 4 for trace_id in wanted), 30, "every request's four spans")
    by_trace = traces()
    job_spans = {}
    for trace_id, parent_id, _ in sent:
        spans = {span["name"]: span for span in by_trace[trace_id]}
        assert sorted(spans) == ["POST /v1/embeddings", "embed", "queue wait", "tokenize"]
        api = spans["POST /v1/embeddings"]
        assert api["service"] == "embeddings-api" and api["parentSpanId"] == parent_id
        assert attribute(api, "http.response.status_code") == "200"
        for name in ("queue wait", "embed", "tokenize"):
            assert spans[name]["service"] == "embeddings-worker"
        assert spans["queue wait"]["parentSpanId"] == spans["embed"]["parentSpanId"] == api["spanId"]
        assert spans["tokenize"]["parentSpanId"] == spans["embed"]["spanId"]
        api_start, wait_start, job_start = (int(spans[name]["startTimeUnixNano"]) for name in spans_in_order)
        assert api_start - 1_000_000 < wait_start <= job_start  # a job's enqueue time is in whole milliseconds
        assert int(spans["embed"]["endTimeUnixNano"]) <= int(api["endTimeUnixNano"])
        job_spans[spans["embed"]["spanId"]] = trace_id

    batches = [span for span in exported_spans(stack.log_dir) if span["name"] == "batch"]
    linked: dict[str, int] = defaultdict(int)
    for batch in batches:
        links = batch.get("links", [])
        assert attribute(batch, "embeddings.batch.requests") == str(len(links))
        assert batch["traceId"] not in wanted  # a batch is its own trace, linked to the requests it served
        for link in links:
            linked[link["spanId"]] += 1
    assert set(job_spans) <= set(linked)  # every request was served by some batch that links to it
    widest = max(int(response.headers["x-batch-requests"]) for _, _, response in sent)
    assert max(len(batch.get("links", [])) for batch in batches) >= widest
    assert widest >= 2, "16 concurrent requests should have shared a forward pass"

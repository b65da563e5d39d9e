"""Tracing across the queue, in one process: the API (FastAPI's server span) over fakeredis, the real worker service
and batcher over a fake encoder, spans caught in memory. ``tests/integration/test_tracing.py`` runs real processes.
"""

import asyncio
import contextlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from shared import tracing
from shared.protocol import decode_sync_task, encode_job
from shared.settings import Settings
from shared.tracing import TracingMisconfigured
from tests.fakes import make_embed_task, served_app
from tests.stack import ROOT
from worker.batcher import MicroBatcher


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.install(None)
    provider.shutdown()


def _tracer() -> trace.Tracer:
    provider = tracing.provider()
    assert provider is not None
    return provider.get_tracer("test")


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp_proto_http"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, ["otlp_proto_grpc"]),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
            | {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
            ["otlp_proto_http"],
        ),
        ({"OTEL_TRACES_EXPORTER": "console, otlp_json_file"}, ["console", "otlp_json_file"]),
    ],
)
def test_the_exporters_come_from_the_standard_variables(environ, names):
    assert tracing.exporter_names(environ) == names


def test_off_by_default_and_a_missing_exporter_is_a_clear_error():
    assert tracing.configure("test", {}) is False
    assert tracing.provider() is None
    with pytest.raises(TracingMisconfigured, match="no span exporter named nope"):
        tracing.configure("test", {"OTEL_TRACES_EXPORTER": "nope"})
    with pytest.raises(TracingMisconfigured, match="protocol 'http/json'"):
        tracing.exporter_names({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_off_every_helper_is_inert():
    assert tracing.inject() is None
    assert tracing.current_span_context() is None
    with tracing.span("x") as inside, tracing.continued(None, "y", queued_since_ms=0, attributes={}) as job:
        assert inside is None and job is None
    tracing.failed("internal", "no span to mark")
    tracing.record_batch([], started_ns=0, forward=(0, 0), ended_ns=0, attributes={})


async def test_off_a_batcher_request_carries_no_trace():
    batcher: MicroBatcher[list[int]] = MicroBatcher(
        lambda batch, group: np.ones((len(batch), 2)), executor=None, max_batch_size=8, max_batch_tokens=64
    )
    try:
        encoded = await batcher.submit([[1, 2]])
    finally:
        await batcher.close()
    assert encoded.vectors.shape == (1, 2)


def test_a_jobs_trace_context_survives_the_wire(spans):
    with _tracer().start_as_current_span("request") as request:
        carrier = tracing.inject()
    assert carrier is not None
    context = request.get_span_context()
    assert carrier["traceparent"].startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")
    job = make_embed_task(trace_context=carrier)
    assert decode_sync_task(encode_job(job)).trace_context == carrier


def test_the_worker_continues_the_request_it_was_sent(spans):
    with _tracer().start_as_current_span("request") as request:
        carrier = tracing.inject()
    queued_ms = int(time.time() * 1000) - 250
    with tracing.continued(carrier, "embed", queued_since_ms=queued_ms, attributes={"embeddings.model": "m"}):
        with tracing.span("tokenize"):
            pass
        tracing.failed("timeout", "too late")
    by_name = {span.name: span for span in spans.get_finished_spans()}
    api = request.get_span_context()
    wait, job, tokenize = by_name["queue wait"], by_name["embed"], by_name["tokenize"]
    assert wait.parent is not None and wait.parent.span_id == api.span_id
    assert job.parent is not None and job.parent.span_id == api.span_id
    assert tokenize.parent is not None and tokenize.parent.span_id == job.context.span_id
    assert {wait.context.trace_id, job.context.trace_id, tokenize.context.trace_id} == {api.trace_id}
    assert wait.start_time == queued_ms * 1_000_000 and wait.end_time == job.start_time
    assert job.kind is SpanKind.CONSUMER and job.attributes["embeddings.model"] == "m"
    assert job.status.status_code is StatusCode.ERROR and job.attributes["error.type"] == "timeout"


def test_a_job_the_api_did_not_sample_makes_no_spans(spans):
    unsampled = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}
    with tracing.continued(unsampled, "embed", queued_since_ms=0, attributes={}) as job:
        assert job is None and tracing.current_span_context() is None  # so no batch links to it either
    sampled = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    with tracing.continued(sampled, "embed", queued_since_ms=0, attributes={}) as job:
        assert job is not None
    assert [span.name for span in spans.get_finished_spans()] == ["queue wait", "embed"]


async def test_one_batch_links_every_request_it_served(spans):
    tracer = _tracer()
    release = asyncio.Event()
    batches: list[int] = []

    def encode(batch, group):
        batches.append(len(batch))
        return np.ones((len(batch), 2))

    batcher: MicroBatcher[list[int]] = MicroBatcher(encode, executor=None, max_batch_size=8, max_batch_tokens=64)

    async def request(name: str):
        with tracer.start_as_current_span(name) as span:
            await release.wait()
            await batcher.submit([[1, 2, 3], [4]])
        return span.get_span_context()

    try:
        first, second = asyncio.create_task(request("a")), asyncio.create_task(request("b"))
        await asyncio.sleep(0)
        release.set()
        contexts = await asyncio.gather(first, second)
    finally:
        await batcher.close()
    assert batches == [4]
    finished = spans.get_finished_spans()
    (batch,) = [span for span in finished if span.name == "batch"]
    (forward,) = [span for span in finished if span.name == "forward"]
    assert {link.context.span_id for link in batch.links} == {context.span_id for context in contexts}
    assert batch.parent is None and batch.context.trace_id not in {context.trace_id for context in contexts}
    assert batch.attributes["embeddings.batch.size"] == 4
    assert batch.attributes["embeddings.batch.requests"] == 2
    assert batch.attributes["embeddings.batch.padded_tokens"] == 12
    assert forward.parent is not None and forward.parent.span_id == batch.context.span_id
    assert batch.start_time <= forward.start_time <= forward.end_time <= batch.end_time


@contextlib.asynccontextmanager
async def _app_and_worker():
    settings = Settings(_env_file=None, request_timeout_s=5, embed_models=["fake-model"], allow_any_model=True)
    async with served_app(settings) as (_, client):
        yield client


def _under(span: ReadableSpan, parent: ReadableSpan) -> bool:
    return span.parent is not None and span.parent.span_id == parent.context.span_id


async def test_a_request_is_one_trace_from_the_api_through_the_worker(spans):
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with _app_and_worker() as client:
        response = await client.post(
            "/v1/embeddings",
            json={"model": "fake-model", "input": ["one", "two"]},
            headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
        )
    assert response.status_code == 200, response.text
    finished = spans.get_finished_spans()
    in_trace = [span for span in finished if f"{span.context.trace_id:032x}" == trace_id]
    by_name = {span.name: span for span in in_trace}
    assert sorted(by_name) == ["POST /v1/embeddings", "embed", "queue wait", "tokenize"]
    api = by_name["POST /v1/embeddings"]
    assert api.kind is SpanKind.SERVER and api.parent is not None and f"{api.parent.span_id:016x}" == parent_id
    assert api.attributes["http.route"] == "/v1/embeddings"
    assert api.attributes["http.response.status_code"] == 200
    assert _under(by_name["queue wait"], api) and _under(by_name["embed"], api)
    assert _under(by_name["tokenize"], by_name["embed"])
    assert by_name["embed"].end_time <= api.end_time
    (batch,) = [span for span in finished if span.name == "batch"]
    assert [link.context.span_id for link in batch.links] == [by_name["embed"].context.span_id]


async def test_a_rerank_is_traced_the_same_way(spans):
    async with _app_and_worker() as client:
        response = await client.post(
            "/v1/rerank", json={"model": "reranker-x", "query": "q", "documents": ["a", "bb", "ccc"]}
        )
    assert response.status_code == 200, response.text
    by_name = {span.name: span for span in spans.get_finished_spans()}
    api, job = by_name["POST /v1/rerank"], by_name["rerank"]
    assert len({span.context.trace_id for span in (api, job, by_name["tokenize"])}) == 1
    assert _under(job, api) and _under(by_name["tokenize"], job)
    assert by_name["tokenize"].attributes["embeddings.inputs"] == 3
    assert [link.context.span_id for link in by_name["batch"].links] == [job.context.span_id]


def test_off_the_sdk_is_not_even_imported():
    environ = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    probe = "import sys, api.main\napi.main.create_app()\nprint(' '.join(sys.modules))"
    output = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=environ, check=True, capture_output=True)
    modules = set(output.stdout.decode().split())
    assert "shared.tracing" in modules and "opentelemetry.trace" in modules  # FastAPI's own import of the API
    assert not {name for name in modules if name.startswith("opentelemetry.sdk")}


async def test_a_failed_request_marks_its_worker_span(spans):
    async with _app_and_worker() as client:
        response = await client.post("/v1/embeddings", json={"model": "missing", "input": "x"})
    assert response.status_code == 404
    (job,) = [span for span in spans.get_finished_spans() if span.name == "embed"]
    assert job.status.status_code is StatusCode.ERROR and job.attributes["error.type"] == "model_not_found"

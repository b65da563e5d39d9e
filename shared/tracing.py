"""OpenTelemetry traces across the queue, configured by the standard ``OTEL_*`` variables, off unless they ask.

On when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``, or any installed one, such as
``otlp_json_file``) and ``OTEL_SDK_DISABLED`` is not ``true``. The SDK reads the rest itself: ``OTEL_SERVICE_NAME``
and ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_*`` and
``OTEL_PROPAGATORS``. ``otlp`` is OTLP over HTTP (the images ship that exporter) unless
``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` says ``grpc``.

Off (the default), the SDK is never imported, jobs carry no trace context, and every helper here returns at once
(``nullcontext`` spans, ``None`` contexts), so tracing that is not asked for costs a branch.

A request's trace: the API's server span (FastAPI's own, named for its route) ends with the reply; its context
travels in the job (``trace_context``, a propagator carrier); the worker adds ``queue wait`` (enqueue to claim)
and a span for the job, with ``tokenize`` under it. Each forward pass is a ``batch`` span of its own, linked to
the job span of every request it served, with the model's ``forward`` under it. A span costs the SDK about 25 us
to make and 30 us to export, so a request makes four (the API's and three here) and a batch two.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, SpanContext, Tracer

log = logging.getLogger(__name__)

#: the entry-point group the SDK's exporters register under
_EXPORTERS_GROUP = "opentelemetry_traces_exporter"
_OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}

_provider: TracerProvider | None = None
_tracer: Tracer | None = None
#: the sampler follows a span's parent (the default, and ``parentbased_*``): then a job the API did not sample gets
#: no spans in the worker
_parent_decides = False


class TracingMisconfigured(ValueError):
    """``OTEL_*`` names an exporter or protocol that is not installed or does not exist."""


def exporter_names(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The entry-point names of the exporters ``environ`` asks for; empty when tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [name.strip() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    if "none" in names:
        return []
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip() or "http/protobuf"
    if "otlp" in names and protocol not in _OTLP_BY_PROTOCOL:
        raise TracingMisconfigured(f"OTLP protocol {protocol!r} is not one of {', '.join(_OTLP_BY_PROTOCOL)}")
    return [_OTLP_BY_PROTOCOL[protocol] if name == "otlp" else name for name in names]


def configure(service_name: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Set the global tracer provider up from ``environ`` (once a process), as ``service_name`` unless
    ``OTEL_SERVICE_NAME`` (or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``) says otherwise. Whether tracing
    is on; TracingMisconfigured if the exporter asked for is not installed."""
    names = exporter_names(environ)
    if not names or _provider is not None:
        return _provider is not None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    available = {point.name: point for point in entry_points(group=_EXPORTERS_GROUP)}
    missing = [name for name in names if name not in available]
    if missing:
        known = ", ".join(sorted(available)) or "none"
        raise TracingMisconfigured(f"no span exporter named {', '.join(missing)} is installed (installed: {known})")
    named = bool(environ.get("OTEL_SERVICE_NAME")) or "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {SERVICE_NAME: service_name}))
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(available[name].load()()))
    trace.set_tracer_provider(provider)
    install(provider)
    log.info("tracing on: spans go to %s", ", ".join(names))
    return True


def install(provider: TracerProvider | None) -> None:
    """Trace through ``provider`` (None: stop tracing); ``configure`` calls it, tests call it with their own."""
    from opentelemetry.sdk.trace.sampling import ParentBased

    global _provider, _tracer, _parent_decides
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer("embeddings-server")
    _parent_decides = provider is not None and isinstance(provider.sampler, ParentBased)


def provider() -> TracerProvider | None:
    return _provider


def flush() -> None:
    """Export what is buffered: when a process stops serving (a worker leaves with ``os._exit``, past atexit)."""
    if _provider is not None:
        _provider.force_flush()


def route_matched(method: str, route: str) -> None:
    """Name the current (server) span for its route, as FastAPI does for the routes it matches itself."""
    if _tracer is None:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    current.update_name(f"{method} {route}")
    current.set_attribute("http.route", route)


def inject() -> dict[str, str] | None:
    """The current span's context as a propagator carrier (``traceparent``...), to put in a job; None when off."""
    if _tracer is None:
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def current_span_context() -> SpanContext | None:
    """What a batch links to for the request being submitted; None when off."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def span(name: str, attributes: Mapping[str, Any] | None = None) -> contextlib.AbstractContextManager[Any]:
    """A span around a block, under the current one; a no-op context when off."""
    if _tracer is None:
        return contextlib.nullcontext()
    return _tracer.start_as_current_span(name, attributes=attributes)


def continued(
    carrier: Mapping[str, str] | None, name: str, *, queued_since_ms: int, attributes: Mapping[str, Any]
) -> contextlib.AbstractContextManager[Any]:
    """The worker's part of a request's trace, current for the block: a ``queue wait`` span from
    ``queued_since_ms`` (epoch ms) to now, then ``name`` for the block, both under the API's span in
    ``carrier`` (a new trace without one). A no-op context when off."""
    if _tracer is None:
        return contextlib.nullcontext()
    from opentelemetry import propagate

    parent = propagate.extract(carrier or {})
    if _parent_decides and not _sampled(parent):
        return contextlib.nullcontext()
    return _continued(_tracer, parent, name, queued_since_ms, attributes)


def _sampled(parent: Context) -> bool:
    """Whether the API sampled the trace ``parent`` continues (true if there is none): a parent-based sampler
    would make every span of an unsampled one a no-op, at about half a recorded span's cost, so none is made."""
    from opentelemetry import trace

    context = trace.get_current_span(parent).get_span_context()
    return not context.is_valid or context.trace_flags.sampled


@contextlib.contextmanager
def _continued(
    tracer: Tracer, parent: Context, name: str, queued_since_ms: int, attributes: Mapping[str, Any]
) -> Iterator[Span]:
    from opentelemetry.trace import SpanKind

    claimed_ns = time.time_ns()
    tracer.start_span("queue wait", parent, start_time=min(queued_since_ms * 1_000_000, claimed_ns)).end(claimed_ns)
    with tracer.start_as_current_span(
        name, parent, kind=SpanKind.CONSUMER, attributes=attributes, start_time=claimed_ns
    ) as job_span:
        yield job_span


def failed(kind: str, message: str) -> None:
    """Mark the current span failed with ``kind`` (an ``ErrorKind`` value); nothing when off."""
    if _tracer is None:
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    current = trace.get_current_span()
    current.set_attribute("error.type", kind)
    current.set_status(Status(StatusCode.ERROR, message))


def record_batch(
    links: list[SpanContext],
    *,
    started_ns: int,
    forward: tuple[int, int],
    ended_ns: int,
    attributes: Mapping[str, Any],
) -> None:
    """One forward pass, after the fact: a ``batch`` span (its own trace) linked to every request it served,
    with ``forward`` (the model's run, epoch ns) under it. Nothing when off or when no request is traced."""
    if _tracer is None or not links:
        return
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Link

    # an empty context: the batch loop's own holds the span of whichever request started the loop
    links_to = [Link(link) for link in links]
    batch = _tracer.start_span("batch", Context(), links=links_to, attributes=attributes, start_time=started_ns)
    _tracer.start_span("forward", trace.set_span_in_context(batch), start_time=forward[0]).end(forward[1])
    batch.end(ended_ns)

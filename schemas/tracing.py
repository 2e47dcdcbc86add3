"""Request ids and OpenTelemetry (issue 31), shared by the processes that trace.

A request's id follows it from the gateway to the replica: W3C Trace Context's
`traceparent` is accepted (its trace id is kept, so a caller's trace goes on through
Greenroom) and passed on with the gateway's own span id; `X-Request-Id` is the caller's,
or else the trace id. Both logs name it (`request_id`, `trace_id`).

OpenTelemetry spans go out over OTLP/HTTP only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
(the SDK's own variables tune the rest: `OTEL_SERVICE_NAME`, `OTEL_BSP_SCHEDULE_DELAY`...).
Unset, `tracer()` is None and nothing of OpenTelemetry is imported: the hot path pays one
`is None` test. The SDK is the `tracing` extra (pyproject.toml); set without it, a warning
says so and tracing stays off.
"""

import contextlib
import os
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)
ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACEPARENT = "traceparent"
REQUEST_ID = "X-Request-Id"
# version 00: trace id (32 hex, not all zero), parent span id (16 hex), flags (2 hex).
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# A caller's request id is kept when it is short plain text (it goes into log lines).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_TRACERS: dict[str, Any] = {}
_PROVIDERS: list[Any] = []


@dataclass(frozen=True, slots=True)
class TraceIds:
    """One request's ids, as it came in (or made up here)."""

    request_id: str
    trace_id: str
    parent_span_id: str | None
    flags: str

    def traceparent(self, span_id: str) -> str:
        """The header passed on, naming `span_id` (this hop's span) as the parent."""
        return f"00-{self.trace_id}-{span_id}-{self.flags}"


def incoming(headers: Mapping[str, str]) -> TraceIds:
    """The ids of a request with these headers: its `traceparent`'s trace (a malformed one
    is ignored, as the spec says), its `X-Request-Id` when plain, else the trace id."""
    given_parent = headers.get(TRACEPARENT)
    found = _TRACEPARENT.fullmatch(given_parent) if given_parent is not None else None
    if found is not None and found[1] != _ZERO_TRACE and found[2] != _ZERO_SPAN:
        trace_id, parent, flags = found[1], found[2], found[3]
    else:
        trace_id, parent, flags = f"{random.getrandbits(128) or 1:032x}", None, "01"
    given = headers.get(REQUEST_ID)
    request_id = given if given and _REQUEST_ID.fullmatch(given) else trace_id
    return TraceIds(request_id, trace_id, parent, flags)


def new_span_id() -> str:
    """A span id, as OpenTelemetry's SDK makes them (`random.getrandbits`, never all zero):
    ids need to be unique, not secret, and the `secrets` module's read of the kernel's
    random source was two system calls on every request at the gateway."""
    return f"{random.getrandbits(64) or 1:016x}"


def tracer(service: str) -> Any | None:
    """The process's OpenTelemetry tracer when OTEL_EXPORTER_OTLP_ENDPOINT is set, else None
    (made once per service name; spans are batched and sent over OTLP/HTTP)."""
    if not os.environ.get(ENDPOINT_ENV):
        return None
    if service in _TRACERS:
        return _TRACERS[service]
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("tracing_unavailable", error=str(exc),
                    hint="pip install 'greenroom[tracing]'")
        _TRACERS[service] = None
        return None
    name = os.environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _PROVIDERS.append(provider)
    found = _TRACERS[service] = provider.get_tracer("greenroom")
    log.info("tracing_on", endpoint=os.environ[ENDPOINT_ENV], service=name)
    return found


@contextlib.contextmanager
def span(service: str, name: str, **attributes: Any) -> Iterator[Any]:
    """A span named `name` around the block when tracing is on (yields it), else nothing
    (yields None)."""
    found = tracer(service)
    if found is None:
        yield None
        return
    with found.start_as_current_span(name, attributes=attributes) as current:
        yield current


def flush(timeout_ms: int = 5000) -> None:
    """Send the spans still batched (a process about to exit; tests)."""
    for provider in _PROVIDERS:
        provider.force_flush(timeout_ms)


def parent_context(ids: TraceIds) -> Any:
    """The OpenTelemetry context whose remote parent is the caller's span (None: a root)."""
    if ids.parent_span_id is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    parent = SpanContext(int(ids.trace_id, 16), int(ids.parent_span_id, 16), is_remote=True,
                         trace_flags=TraceFlags(int(ids.flags, 16)))
    return trace.set_span_in_context(NonRecordingSpan(parent))


def span_ids(span: Any) -> tuple[str, str]:
    """(trace id, span id) of an OpenTelemetry span, as hex."""
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"

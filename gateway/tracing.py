"""The gateway's side of tracing (issue 31; schemas/tracing.py has the ids and the tracer):
one `request` log line per answered request, under the `greenroom.requests` logger, with its
request and trace ids, and an OpenTelemetry span around the forward when tracing is on."""

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from uuid import UUID

import structlog

from db.deployments import Route
from schemas import tracing

# One line per answered request: `greenroom logs MODEL --request ID` finds the replica's,
# and an operator the gateway's, by its request_id.
request_log = structlog.get_logger("greenroom.requests")


@contextlib.contextmanager
def traced(tracer: Any, ids: tracing.TraceIds, route: Route,
           path: str) -> Iterator[tuple[tracing.TraceIds, str, Any]]:
    """A span for one forward, the caller's span (from its traceparent) as its parent;
    yields the ids (the span's trace when the caller sent none), the span's id (the parent
    the replica is told of) and the span."""
    from opentelemetry.trace import SpanKind

    with tracer.start_as_current_span(
            f"POST {path}" if path != "/" else "forward", context=tracing.parent_context(ids),
            kind=SpanKind.SERVER,
            attributes={"greenroom.deployment": route.name,
                        "greenroom.model_id": str(route.model_id),
                        "greenroom.generation": route.generation,
                        "url.path": path}) as span:
        trace_id, span_id = tracing.span_ids(span)
        if trace_id != ids.trace_id:  # no caller's trace: the span's own, and its id
            own = ids.request_id == ids.trace_id
            ids = replace(ids, trace_id=trace_id, request_id=trace_id if own else ids.request_id)
        span.set_attribute("greenroom.request_id", ids.request_id)
        yield ids, span_id, span


def tracing_span_done(span: Any, deployment: str, replica_id: UUID, status: int) -> None:
    span.set_attribute("greenroom.replica", str(replica_id))
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        from opentelemetry.trace import StatusCode

        span.set_status(StatusCode.ERROR)

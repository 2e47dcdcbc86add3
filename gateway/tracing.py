"""The gateway's side of tracing (issue 31; schemas/tracing.py has the ids and the tracer):
one `request` log line per answered request, with its request and trace ids, and an
OpenTelemetry span around the forward when tracing is on.

The request lines are JSON, as the rest of the gateway's log, but written in batches (every
FLUSH_S, or at once past FLUSH_LINES): a structlog call and a write per request cost the
gateway about 0.1 ms at p50 on a loaded two-core machine (bench/tracing.py), a batch next
to nothing.
"""

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, TextIO
from uuid import UUID

import orjson

from db.deployments import Route
from schemas import tracing

FLUSH_S = 0.2
FLUSH_LINES = 512


class RequestLog:
    """`request` lines, batched: `add` keeps one, a task writes them every FLUSH_S."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out
        self._lines: list[bytes] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, **fields: Any) -> None:
        line = {"event": "request", "level": "info", "timestamp": _stamp(time.time()),
                **fields}
        self._lines.append(orjson.dumps(line))
        if len(self._lines) >= FLUSH_LINES:
            self.flush()
        elif self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._later())

    async def _later(self) -> None:
        try:
            await asyncio.sleep(FLUSH_S)
        finally:
            self._task = None
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        text = b"\n".join(self._lines).decode() + "\n"
        self._lines = []
        out = self._out or sys.stderr
        with contextlib.suppress(OSError, ValueError):
            out.write(text)
            out.flush()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.flush()


_second: list[Any] = [None, ""]  # the last second stamped, and its ISO 8601 text


def _stamp(now: float) -> str:
    """`now` (time.time()) in ISO 8601 UTC to the microsecond, as structlog's lines: the
    second's text made once a second (a datetime a line cost twice as much)."""
    second = int(now)
    if _second[0] != second:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second[1]}.{int((now - second) * 1e6):06d}Z"


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


def tracing_span_done(span: Any, replica_id: UUID, status: int, generation: int) -> None:
    """The answer's replica, status and generation (a canary's candidate's when it
    answered, not the serving one `traced` began with)."""
    span.set_attribute("greenroom.replica", str(replica_id))
    span.set_attribute("greenroom.generation", generation)
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        from opentelemetry.trace import StatusCode

        span.set_status(StatusCode.ERROR)

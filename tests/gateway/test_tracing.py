"""Issue 31, tracing: a request's id follows it from the gateway to the replica (W3C
`traceparent` accepted and passed on, `X-Request-Id` kept or made) and both logs name it;
with OTEL_EXPORTER_OTLP_ENDPOINT set the gateway sends a span per request over OTLP/HTTP
(to a sink this test runs), the caller's span its parent and the replica told of it.
Real gateway and model-server processes."""

import asyncio
import contextlib
import gzip
import json
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from schemas import tracing
from tests.conftest import Proc, start_gateway
from tests.gateway.test_gateway_answers import _until_routed, serve_from
from tests.model_server.conftest import poll_health, start_server
from worker.runtimes.process import free_port


def test_a_callers_traceparent_and_request_id_are_kept() -> None:
    trace, parent = secrets.token_hex(16), secrets.token_hex(8)
    ids = tracing.incoming({"traceparent": f"00-{trace}-{parent}-01", "X-Request-Id": "abc-1"})
    assert (ids.trace_id, ids.parent_span_id, ids.request_id) == (trace, parent, "abc-1")
    span = tracing.new_span_id()
    assert ids.traceparent(span) == f"00-{trace}-{span}-01"
    # No request id given: the trace id is the request id.
    assert tracing.incoming({"traceparent": f"00-{trace}-{parent}-00"}).request_id == trace


@pytest.mark.parametrize("header", ["", "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
                                    "00-" + "a" * 32 + "-" + "0" * 16 + "-01",
                                    "01-" + "a" * 32 + "-" + "b" * 16 + "-01",
                                    "00-" + "A" * 32 + "-" + "b" * 16 + "-01", "garbage"])
def test_a_bad_traceparent_starts_a_new_trace(header: str) -> None:
    ids = tracing.incoming({"traceparent": header, "X-Request-Id": "€ not plain"})
    assert ids.parent_span_id is None and len(ids.trace_id) == 32
    assert ids.trace_id not in header and ids.request_id == ids.trace_id


@contextlib.asynccontextmanager
async def otlp_sink() -> AsyncIterator[tuple[str, list[Any]]]:
    """An OTLP/HTTP endpoint: every span it is sent, decoded."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    spans: list[Any] = []

    async def traces(request: web.Request) -> web.Response:
        raw = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        export = ExportTraceServiceRequest.FromString(raw)
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                spans.extend(scope.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port("127.0.0.1")
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", spans
    finally:
        await runner.cleanup()


def _lines(log: Path, event: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == event:
                found.append(entry)
    return found


async def test_ids_reach_the_replica_and_both_logs_and_spans_go_out(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    model_id = await hashing_model("traced")
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="hashing", MODEL_SERVER_DIMENSION="8")
    try:
        await poll_health(http, server)
        await serve_from(pool, model_id, "traced", [server.url])
        async with otlp_sink() as (sink, spans):
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sink)
            monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
            traced = await start_gateway(spawn, http)
            monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
            plain = await start_gateway(spawn, http)
            url = "/serve/traced/embed"
            await _until_routed(http, traced + url, {"inputs": "x"})
            await _until_routed(http, plain + url, {"inputs": "x"})

            trace, parent = secrets.token_hex(16), secrets.token_hex(8)
            async with http.post(traced + url, json={"inputs": "hello"},
                                 headers={"traceparent": f"00-{trace}-{parent}-01"}) as resp:
                assert resp.status == 200
                assert resp.headers["X-Request-Id"] == trace
            async with http.post(plain + url, json={"inputs": "hello"},
                                 headers={"X-Request-Id": "req-42"}) as resp:
                assert resp.status == 200 and resp.headers["X-Request-Id"] == "req-42"

            for _ in range(100):  # the batch processor's 100 ms
                if any(s.trace_id.hex() == trace for s in spans):
                    break
                await asyncio.sleep(0.1)
            (span,) = [s for s in spans if s.trace_id.hex() == trace]
            assert span.parent_span_id.hex() == parent, "the caller's span is its parent"
            attributes = {a.key: a.value for a in span.attributes}
            assert attributes["greenroom.deployment"].string_value == "traced"
            assert attributes["http.response.status_code"].int_value == 200
            assert not any(s for s in spans if s.trace_id.hex() != trace and
                           any(a.key == "greenroom.request_id" and
                               a.value.string_value == "req-42" for a in s.attributes)), \
                "the gateway without the endpoint sends nothing"
    finally:
        server.stop()

    # The replica's log names both requests, the traced one under the gateway's span.
    replica_lines = _lines(server.log_path, "request")
    by_id = {line["request_id"]: line for line in replica_lines}
    assert by_id[trace]["trace_id"] == trace
    assert by_id["req-42"]["path"] == "/embed" and by_id["req-42"]["status"] == 200
    await asyncio.sleep(1.0)  # the gateway writes its request lines every 0.2 s
    gateway_logs = list(tmp_path.glob("gateway.server-*.log"))
    gateway_lines = [line for log in gateway_logs for line in _lines(log, "request")]
    assert {trace, "req-42"} <= {line["request_id"] for line in gateway_lines}
    assert any(line["trace_id"] == trace and line["deployment"] == "traced"
               for line in gateway_lines)


def test_off_by_default_nothing_of_opentelemetry_is_imported() -> None:
    """Without OTEL_EXPORTER_OTLP_ENDPOINT the gateway has no tracer, and neither its
    modules nor making one import any of OpenTelemetry (the hot path pays an `is None`)."""
    import os
    import subprocess
    import sys

    code = ("import sys\n"
            "from gateway import app, routing\n"
            "from schemas import tracing\n"
            "assert tracing.tracer('greenroom-gateway') is None\n"
            "assert not [m for m in sys.modules if m.startswith('opentelemetry')], "
            "[m for m in sys.modules if m.startswith('opentelemetry')]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr

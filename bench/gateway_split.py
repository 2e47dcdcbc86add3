"""Where the Python gateway's CPU per request goes: the server side, the upstream call, the
gateway's own logic (issue 29's share of MiniLM throughput).

One hashing replica, TEI POST /embed, wrk -t1 at one concurrency, interleaved rounds; the
CPU each path's server process spends per request (from /proc), by layers:

  bare      an aiohttp app with one route that reads the body and answers fixed bytes, run
            as the gateway runs (uvloop, handler_cancellation, no access log): aiohttp's
            server side alone;
  forward   the same app forwarding the body to the replica with gateway/upstream.py and
            answering its bytes: server side + the upstream call;
  gateway   `greenroom gateway` routing to the replica by deployment name: all of it;
  raw       no aiohttp: an asyncio Protocol that finds the request's head and body by hand
            and forwards the body as `forward` does (`--raw`): what a Python data plane
            without aiohttp's server would start from (a sketch: no keep-alive rules,
            pipelining, chunked bodies or errors).

So `forward - bare` is the upstream call and `gateway - forward` the gateway's own logic
(auth decision, admission, routing pick, tracing ids, metrics, the request line). With
`--before DIR` (a checkout of an earlier commit, e.g. `git archive <commit> | tar -x -C
DIR`), that checkout's gateway is measured too, as `before`, on the same database and
replica, in the same interleaved rounds: on a shared machine only a comparison within one
run means anything.

At MiniLM's rate (about 150 requests a second, each waking the process alone) the same work
costs several times what it does at thousands a second: run the replica as a slow one
without compute, `MODEL_SERVER_TEST_SERVICE_TIME_MS=5 MODEL_SERVER_TEST_CONCURRENCY=1` in
the environment with `--concurrency 32`. `bare` still runs at full speed then (it never
waits for the replica), so compare `forward`, `raw` and `gateway` there.

    .venv/bin/python bench/gateway_split.py [--seconds 3] [--rounds 3] [--concurrency 16]
        [--before DIR] [--raw]
"""

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.gateway import (  # noqa: E402
    HOST,
    SENTENCE,
    WRK_SCRIPT,
    _load,
    _process,
    _until_routed,
    gateway,
    measure,
    replica,
    route,
)
from gateway.server import _fast_loop  # noqa: E402
from gateway.upstream import Upstream  # noqa: E402
from launch import backing  # noqa: E402
from worker.runtimes.process import free_port  # noqa: E402

FIXED = b'[[0.0, 0.1, 0.2]]'


def _serve(layer: str, port: int, upstream_url: str) -> None:
    """A layer's server process (see the module's doc)."""
    from aiohttp import web


    upstream = Upstream(60.0)

    async def bare(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=FIXED, content_type="application/json")

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        answer = await upstream.request(upstream_url, "POST", "/embed", body,
                                        {"Content-Type": "application/json"})
        out = web.Response(body=answer.body, status=answer.status)
        if answer.content_type:
            out.headers["Content-Type"] = answer.content_type
        return out

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    if layer == "raw":
        _fast_loop()
        asyncio.run(_raw(port, upstream, upstream_url))
        return

    app = web.Application()
    app.router.add_post("/serve/{name}/embed", bare if layer == "bare" else forward)
    app.router.add_get("/healthz", health)
    _fast_loop()
    web.run_app(app, host=HOST, port=port, print=None, access_log=None,
                handler_cancellation=True)


class _RawServer(asyncio.Protocol):
    """The `raw` layer: one request at a time per connection, the body forwarded as is."""

    def __init__(self, upstream: Upstream, url: str) -> None:
        self.upstream, self.url = upstream, url
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower() + b"\r\n"
        at = head.find(b"\r\ncontent-length:")
        length = int(head[at + 17:head.index(b"\r\n", at + 2)]) if at >= 0 else 0
        if len(self.buf) < end + 4 + length:
            return
        body = bytes(self.buf[end + 4:end + 4 + length])
        del self.buf[:end + 4 + length]
        asyncio.get_running_loop().create_task(self._forward(head.startswith(b"get"), body))

    async def _forward(self, get: bool, body: bytes) -> None:
        if get:
            status, content_type, payload = 200, "text/plain", b"ok"
        else:
            answer = await self.upstream.request(self.url, "POST", "/embed", body,
                                                 {"Content-Type": "application/json"})
            status, content_type = answer.status, answer.content_type or "application/json"
            payload = answer.body
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 %d OK\r\nContent-Type: %s\r\nContent-Length: %d"
                             b"\r\n\r\n%s" % (status, content_type.encode(), len(payload),
                                               payload))


async def _raw(port: int, upstream: Upstream, url: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _RawServer(upstream, url), HOST, port)
    async with server:
        await server.serve_forever()


async def _bench(args: argparse.Namespace, tmp: Path) -> None:
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT.format(sentence=SENTENCE))
    async with gateway(tmp, 1, False, args.before) as planes:
        with replica(tmp, "hashing", free_port(HOST)) as direct:
            async with aiohttp.ClientSession() as http:
                await backing.wait_for_http(http, direct + "/health", 60)
            await route(planes, "hashing", direct)
            await _until_routed(f"{planes.gateway}/serve/hashing/embed")
            paths = {"direct": direct + "/embed"}
            layers = ("bare", "forward", "raw") if args.raw else ("bare", "forward")
            ports = {layer: free_port(HOST) for layer in layers}
            with contextlib.ExitStack() as stack:
                for layer, port in ports.items():
                    stack.enter_context(_process(
                        [sys.executable, __file__, "--serve", layer, "--port", str(port),
                         "--replica", direct], dict(os.environ), tmp / f"{layer}.log",
                        f"http://{HOST}:{port}"))
                async with aiohttp.ClientSession() as http:
                    for port in ports.values():
                        await backing.wait_for_http(http, f"http://{HOST}:{port}/healthz")
                for layer, port in ports.items():
                    paths[layer] = f"http://{HOST}:{port}/serve/hashing/embed"
                if planes.before:
                    paths["before"] = f"{planes.before}/serve/hashing/embed"
                    await _until_routed(paths["before"])
                paths["gateway"] = f"{planes.gateway}/serve/hashing/embed"
                runs = measure(paths, [args.concurrency], args.seconds, args.rounds, script)
    print(f"gateway CPU split, hashing replica, TEI POST /embed, wrk -t1 -c{args.concurrency}, "
          f"{args.rounds} x {args.seconds:g} s per path, interleaved; load average {_load()}")
    cpu = {}
    for name in paths:
        run = runs[(name, args.concurrency)]
        cpu[name] = run.per_request_us(run.proxy_cpu_s)
        replica_us = run.per_request_us(run.replica_cpu_s)
        print(f"  {name:8} {run.rate:7.0f} req/s   p50 {run.p50_ms:6.2f} ms   CPU/request: "
              f"server {cpu[name]:5.0f} us, replica {replica_us:5.0f} us")
    if "before" in cpu:
        print(f"  before: {cpu['before']:.0f} us, this checkout {cpu['gateway']:.0f} us "
              f"({cpu['gateway'] / cpu['before'] - 1:+.0%})")
    print(f"  split: aiohttp server side {cpu['bare']:.0f} us, upstream call "
          f"{cpu['forward'] - cpu['bare']:.0f} us, gateway's own logic "
          f"{cpu['gateway'] - cpu['forward']:.0f} us (total {cpu['gateway']:.0f} us)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--before", type=Path, help="an earlier checkout, measured beside")
    parser.add_argument("--raw", action="store_true", help="measure the `raw` layer too")
    parser.add_argument("--serve", choices=["bare", "forward", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--replica", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve, args.port, args.replica)
        return
    with tempfile.TemporaryDirectory(prefix="greenroom-split-") as tmp:
        asyncio.run(_bench(args, Path(tmp)))


if __name__ == "__main__":
    from schemas.logs import configure_logging

    configure_logging("warning")
    main()

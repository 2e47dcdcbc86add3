"""Where the Python gateway's CPU per request goes: the server side, the upstream call, the
gateway's own logic (issue 29's share of MiniLM throughput).

One hashing replica, TEI POST /embed, wrk -t1 at one concurrency, interleaved rounds; the
CPU each path's server process spends per request (from /proc), by layers:

  bare      an aiohttp app with one route that reads the body and answers fixed bytes, run
            as the gateway runs (uvloop, handler_cancellation, no access log): aiohttp's
            server side alone;
  forward   the same app forwarding the body to the replica with gateway/upstream.py and
            answering its bytes: server side + the upstream call;
  gateway   `greenroom gateway` routing to the replica by deployment name: all of it.

So `forward - bare` is the upstream call and `gateway - forward` the gateway's own logic
(auth decision, admission, routing pick, tracing ids, metrics, the request line). With
`--before DIR` (a checkout of an earlier commit, e.g. `git archive <commit> | tar -x -C
DIR`), that checkout's gateway is measured too, as `before`, on the same database and
replica, in the same interleaved rounds: on a shared machine only a comparison within one
run means anything.

    .venv/bin/python bench/gateway_split.py [--seconds 3] [--rounds 3] [--concurrency 16]
        [--before DIR]
"""

import argparse
import asyncio
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
    _process,
    _until_routed,
    gateway,
    measure,
    replica,
    route,
)
from launch import backing  # noqa: E402
from worker.runtimes.process import free_port  # noqa: E402

FIXED = b'[[0.0, 0.1, 0.2]]'


def _serve(layer: str, port: int, upstream_url: str) -> None:
    """A layer's server process (see the module's doc)."""
    from aiohttp import web

    from gateway.server import _fast_loop
    from gateway.upstream import Upstream

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

    app = web.Application()
    app.router.add_post("/serve/{name}/embed", bare if layer == "bare" else forward)
    app.router.add_get("/healthz", health)
    _fast_loop()
    web.run_app(app, host=HOST, port=port, print=None, access_log=None,
                handler_cancellation=True)


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
            ports = {layer: free_port(HOST) for layer in ("bare", "forward")}
            with (_process([sys.executable, __file__, "--serve", "bare", "--port",
                            str(ports["bare"]), "--replica", direct], dict(os.environ),
                           tmp / "bare.log", f"http://{HOST}:{ports['bare']}"),
                  _process([sys.executable, __file__, "--serve", "forward", "--port",
                            str(ports["forward"]), "--replica", direct], dict(os.environ),
                           tmp / "forward.log", f"http://{HOST}:{ports['forward']}")):
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
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"gateway CPU split, hashing replica, TEI POST /embed, wrk -t1 -c{args.concurrency}, "
          f"{args.rounds} x {args.seconds:g} s per path, interleaved; load average {load}")
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
    parser.add_argument("--serve", choices=["bare", "forward"], help=argparse.SUPPRESS)
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

"""Where HAProxy's time goes: Greenroom's HAProxy configuration, parts of it changed, vs nginx.

One hashing replica (`python -m model_server`), nginx in front of it as in bench/gateway.py,
and one standalone HAProxy per variant, each made from gateway/haproxy/config.py's
configuration and programmed as the controller programs a one-replica deployment (its slot
server pointed at the replica, the name in the `direct` map). No controller runs, so a
variant measures HAProxy's request path alone, unless it adds the controller's polling back:

  base       the configuration as the controller writes it (4 slots)
  minimal    one frontend, one backend, one server, only the path rewrite: HAProxy's floor
  nobuf      without `option http-buffer-request`
  noretry    without L7 retries (`retry-on conn-failure empty-response`)
  noregex    the route checks and path rewrite by `field` converters and string lists
             instead of three PCRE regexes
  nohdr      without the `X-Greenroom-Replica` response header (a map lookup)
  slots64    the default pool of 64 slots x 16 servers
  poll64     64 slots, `show stat -1 2 -1` every 50 ms (the load poll over the whole pool,
             as the controller did before it read only the slots in use)
  poll       4 slots, `show stat slot0 2 -1` every 50 ms (the load poll as it is now)
             Both read as the controller does: `RuntimeApi.backends` on one kept session.
  lowlat     + `tune.sched.low-latency on`
  busy       + `busy-polling` (never sleeps in epoll: one core at 100 % while idle)
  nodelay    + `option http-no-delay`
  reuse      + `http-reuse always`

Parts combine with `+` (`noretry+nohdr+nobuf`).

wrk -t1 at each concurrency, the paths (the replica directly too) interleaved round by round
(bench/gateway.py's `measure`); per path: throughput, its ratio to nginx, the proxy's CPU
per request (from /proc), p50. `--stat-cost` prints what each `show stat` form costs
HAProxy on the 64-slot pool instead.

    .venv/bin/python bench/haproxy_variants.py [--variants base,minimal,...] [--levels 1,16]
        [--seconds 3] [--rounds 3] [--stat-cost]
"""

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.gateway import (  # noqa: E402
    HOST,
    PIDS,
    SENTENCE,
    WRK_SCRIPT,
    cpu_s,
    measure,
    nginx,
    replica,
)
from gateway.haproxy.config import Layout, render, write  # noqa: E402
from gateway.haproxy.runtime_api import RuntimeApi, RuntimeApiError  # noqa: E402
from launch import backing  # noqa: E402
from worker.runtimes.process import free_port  # noqa: E402

GLOBAL = {"lowlat": "    tune.sched.low-latency on\n", "busy": "    busy-polling\n"}
DEFAULTS = {"nodelay": "    option http-no-delay\n", "reuse": "    http-reuse always\n"}
REMOVE = {"nobuf": "    option http-buffer-request\n",
          "noretry": "    retry-on conn-failure empty-response\n"}
POLLS = {"poll64": ["-1"], "poll": ["slot0"]}  # the backends read (`-1`: all of them)
VARIANTS = ["base", "minimal", "noregex", "nobuf", "noretry", "nohdr", "slots64", "poll64", "poll",
            "lowlat", "busy", "nodelay", "reuse"]
MINIMAL = """global
    nbthread 1
defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 60s
    timeout server 60s
frontend data
    bind {host}:{port}
    http-request replace-path ^/serve/[^/]+/?(.*)$ /\\1
    default_backend replica
backend replica
    server r1 {upstream}
"""


def command(path: Path, line: str) -> str:
    """One Runtime API command on HAProxy's admin socket (a connection of its own)."""
    return asyncio.run(RuntimeApi(path).command(line))


def configuration(variant: str, layout: Layout, upstream: str) -> str:
    """The configuration of `variant`: one name, or parts joined by `+` (`noretry+nohdr`)."""
    if variant == "minimal":
        return MINIMAL.format(host=HOST, port=layout.port, upstream=upstream)
    text = render(layout)
    for part in variant.split("+"):
        if part in GLOBAL:
            text = text.replace("global\n", "global\n" + GLOBAL[part], 1)
        if part in DEFAULTS:
            text = text.replace("    option redispatch 1\n",
                                "    option redispatch 1\n" + DEFAULTS[part], 1)
        if part in REMOVE:
            text = text.replace(REMOVE[part], "")
        if part == "noregex":
            text = _noregex(text)
        if part == "nohdr":
            text = "\n".join(line for line in text.split("\n")
                             if "X-Greenroom-Replica" not in line)
    return text


NOREGEX_FRONTEND = """    acl serve path_beg /serve/
    http-request set-var(txn.route) path,field(4,/,0) if serve !has_token
    acl route_set var(txn.route) -m found
    acl post_route var(txn.route) -m str embed embed_all tokenize decode v1/embeddings
    acl root_route var(txn.route) -m len 0
    acl get_route var(txn.route) -m str health info metrics
    http-request set-var(txn.slot) path,field(3,/),map(MAP) if METH_POST post_route
    http-request set-var(txn.slot) path,field(3,/),map(MAP) if METH_POST root_route
    http-request set-var(txn.slot) path,field(3,/),map(MAP) if METH_POST serve !has_token !route_set
    http-request set-var(txn.slot) path,field(3,/),map(MAP) if METH_GET get_route
    http-request set-path /%[var(txn.route)] if { var(txn.slot) -m found }
"""


def _noregex(text: str) -> str:
    lines = text.split("\n")
    mapping = next(line for line in lines if "set-var(txn.slot)" in line)
    path = mapping.split("map(")[1].split(")")[0]
    kept = [line for line in lines if not any(
        key in line for key in ("direct_post", "direct_get", "set-var(txn.slot)", "replace-path"))]
    at = next(i for i, line in enumerate(kept) if line.startswith("    use_backend"))
    kept.insert(at, NOREGEX_FRONTEND.replace("MAP", path).rstrip("\n"))
    return "\n".join(kept)


@contextlib.contextmanager
def haproxy(tmp: Path, variant: str, upstream: str, slots: int) -> Iterator[tuple[str, int]]:
    """HAProxy for `variant`, routing /serve/bench/... to `upstream`; (URL, pid). Its base
    URL goes into bench.gateway's PIDS, so `measure` counts its CPU."""
    folder = tmp / f"haproxy-{variant}"
    layout = Layout(folder, HOST, free_port(HOST), free_port(HOST), [free_port(HOST)], slots,
                    16, threads=1)
    write(layout)
    layout.config.write_text(configuration(variant, layout, upstream))
    layout.direct_map.write_text("bench slot0\n")
    layout.replicas_map.write_text("s0_1 bench-replica\n")
    ring = _ring_reader(layout.traffic_socket)
    proc = subprocess.Popen(["haproxy", "-W", "-db", "-f", str(layout.config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()
    try:
        for _ in range(100):
            with contextlib.suppress(RuntimeApiError):
                command(layout.admin_socket, "show info")
                break
            time.sleep(0.05)
        if variant != "minimal":
            host, port = upstream.split(":")
            command(layout.admin_socket, f"set server slot0/s0_1 addr {host} port {port}")
            command(layout.admin_socket, "set server slot0/s0_1 state ready")
        for part in set(variant.split("+")) & POLLS.keys():
            threading.Thread(target=_poll, args=(layout.admin_socket, POLLS[part], stop),
                             daemon=True).start()
        PIDS[f"http://{HOST}:{layout.port}"] = proc.pid
        yield f"http://{HOST}:{layout.port}/serve/bench/embed", proc.pid
    finally:
        stop.set()
        proc.terminate()
        proc.wait(timeout=20)
        ring.close()


def _ring_reader(path: Path) -> socket.socket:
    """The controller's end of the `traffic` ring (gateway/haproxy/traffic.py): accepted
    and read, so the configuration runs as under the controller (HAProxy 2.6 retries a
    ring server it cannot reach in a busy loop, most of a core)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def read(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            while conn.recv(65536):
                pass

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=read, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener


def _poll(path: Path, backends: list[str], stop: threading.Event) -> None:
    """The controller's load poll: `RuntimeApi.backends` every 50 ms, on its kept session."""
    async def loop() -> None:
        api = RuntimeApi(path)
        try:
            while not stop.is_set():
                await asyncio.sleep(0.05)
                with contextlib.suppress(RuntimeApiError):
                    await api.backends(backends)
        finally:
            api.close()

    asyncio.run(loop())


async def _healthy(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        await backing.wait_for_http(http, base + "/health", 60)


async def _repeat(api: RuntimeApi, line: str, count: int) -> str:
    for _ in range(count):
        answer = await api.command(line)
    return answer


def stat_cost(tmp: Path) -> None:
    """HAProxy's CPU and the wall time of each `show stat` form, on the 64-slot pool."""
    with haproxy(tmp, "slots64", "127.0.0.1:9", 64) as (_, pid):
        folder = tmp / "haproxy-slots64"
        for line in ["show stat -1 2 -1", "show stat -1 4 -1", "show stat slot0 2 -1",
                     "show stat slot0 4 -1", "show stat slot0 2 -1;show stat slot1 2 -1"]:
            count, before, started = 200, cpu_s(pid, "haproxy"), time.perf_counter()
            answer = asyncio.run(_repeat(RuntimeApi(folder / "admin.sock"), line, count))
            wall = (time.perf_counter() - started) / count
            used = (cpu_s(pid, "haproxy") - before) / count
            print(f"  {line!r:46} {len(answer):7,} bytes   wall {wall * 1e6:6.0f} us   "
                  f"HAProxy CPU {used * 1e6:6.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="base,minimal,noretry,poll64,poll",
                        help=f"comma-separated, of {','.join(VARIANTS)}")
    parser.add_argument("--levels", default="1,16", help="wrk connections, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stat-cost", action="store_true",
                        help="only what each `show stat` form costs HAProxy")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if ("minimal" in v.split("+") and "+" in v)
               or any(part not in VARIANTS for part in v.split("+"))]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {VARIANTS}")
    for tool in ("haproxy", "nginx", "wrk"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} not found: apt-get install -y {tool}")
    with tempfile.TemporaryDirectory(prefix="greenroom-bench-") as name:
        tmp = Path(name)
        if args.stat_cost:
            print("show stat on the 64-slot pool (16 servers each), 200 reads each:")
            stat_cost(tmp)
            return
        script = tmp / "wrk.lua"
        script.write_text(WRK_SCRIPT.format(sentence=SENTENCE))
        levels = [int(level) for level in args.levels.split(",")]
        with replica(tmp, "hashing", free_port(HOST)) as direct, contextlib.ExitStack() as stack:
            asyncio.run(_healthy(direct))
            upstream = direct.removeprefix("http://")
            proxy = stack.enter_context(nginx(upstream, tmp, 1))
            # bench/gateway.py's measure: "direct" is the replica itself, whose CPU it counts.
            paths = {"direct": direct + "/embed", "nginx": proxy + "/embed"}
            for variant in variants:
                slots = 64 if {"slots64", "poll64"} & set(variant.split("+")) else 4
                paths[variant], _ = stack.enter_context(haproxy(tmp, variant, upstream, slots))
            runs = measure(paths, levels, args.seconds, args.rounds, script)
        print(f"HAProxy variants vs nginx: one hashing replica, TEI POST /embed, wrk -t1, "
              f"{args.rounds} x {args.seconds:g} s per path and level, interleaved")
        for level in levels:
            peer = runs[("nginx", level)]
            for name in paths:
                run = runs[(name, level)]
                print(f"  c={level:<3} {name:8} {run.rate:7.0f} req/s   / nginx "
                      f"{run.rate / peer.rate:5.2f}   proxy CPU/request "
                      f"{run.per_request_us(run.proxy_cpu_s):6.1f} us   p50 {run.p50_ms:.2f} ms")


if __name__ == "__main__":
    main()

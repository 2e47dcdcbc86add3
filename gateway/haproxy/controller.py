"""`greenroom gateway --engine haproxy`: run HAProxy and the Python gateways, and program it.

One asyncio process. It starts `gateway_processes` Python gateways on loopback ports of
their own, writes HAProxy's configuration (gateway/haproxy/config.py) and runs HAProxy
in master-worker mode (`-W`, master CLI on `master.sock`, admin socket `admin.sock`,
both in its own folder under the state dir; no root). Then it keeps HAProxy in step
with the routing table — the same Postgres query and Redis change notices the Python
gateway uses — through the Runtime API (gateway/haproxy/programmer.py), and writes a
`GatewayReport` for what HAProxy carries itself: each replica's `scur` from `show stat`
as its in-flight count, `stot` as its finished count. The Python gateways report their
own traffic, so the drain and the autoscaler read both unchanged. A jump in a model's
requests in flight (its serving slot's `scur`, read every LOAD_POLL_S) is reported at
once and announced on LOAD_CHANNEL, by the Python gateway's rule (gateway/load_signal.py).
The report's `traffic` (per generation: requests, errors, a latency histogram, for the
canary judge) comes from the slots' counters read with the servers' rows and from the
`canary` frontend's log lines (gateway/haproxy/traffic.py).
"""

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from db import deployments
from db.deployments import Route
from db.errors import DatabaseError
from db.pool import create_pool
from gateway.children import die_with_parent
from gateway.haproxy.config import Layout, write
from gateway.haproxy.programmer import Programmer
from gateway.haproxy.runtime_api import RuntimeApi, RuntimeApiError, ServerStat
from gateway.haproxy.traffic import HaproxyTraffic, bind, listen
from gateway.load_signal import HEARTBEAT_S, is_jump
from schemas.gateway import GatewayReport
from schemas.queue import (
    AUTH_CHANNEL,
    GATEWAY_KEY_PREFIX,
    GATEWAY_TTL_S,
    LOAD_CHANNEL,
    ROUTES_CHANNEL,
)
from schemas.settings import Settings

log = structlog.get_logger(__name__)
# How often the backends' in-flight counts are read for a jump in load (one short
# `show stat` of backend rows), which is reported and announced at once, as the Python
# gateway does (gateway/load_signal.py's rule).
LOAD_POLL_S = 0.05
DRAIN_POLL_S = 0.05  # while servers drain: how often `scur` is read
STOP_GRACE_S = 20.0
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes


def find_haproxy(settings: Settings) -> str | None:
    """The HAProxy binary to run, or None when it is not installed."""
    found = shutil.which(settings.haproxy_binary)
    if found is None and Path("/usr/sbin/haproxy").exists() and "/" not in settings.haproxy_binary:
        found = "/usr/sbin/haproxy"
    return found


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _folder(settings: Settings) -> Path:
    """Its own folder in the state dir; a short temporary one when sockets would not fit."""
    folder = (settings.state_dir / "haproxy" / str(settings.gateway_port)).resolve()
    if len(str(folder / "traffic.sock")) > _SOCKET_PATH_MAX:  # its longest socket name
        folder = Path(tempfile.mkdtemp(prefix="greenroom-haproxy-"))
    return folder


def _gateway_env(settings: Settings, port: int) -> dict[str, str]:
    env = dict(os.environ, GREENROOM_GATEWAY_ENGINE="python", GREENROOM_GATEWAY_PROCESSES="1",
               GREENROOM_GATEWAY_HOST="127.0.0.1", GREENROOM_GATEWAY_PORT=str(port))
    secret = settings.secret_key.get_secret_value() if settings.secret_key else None
    for name, value in (("DATABASE_URL", settings.database_url),
                        ("REDIS_URL", settings.redis_url), ("SECRET_KEY", secret)):
        if value:
            env[f"GREENROOM_{name}"] = value
    return env


async def _stop(proc: asyncio.subprocess.Process, sig: int) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


class Controller:
    """HAProxy, the Python gateways behind it, and the loop that keeps its routes current."""

    def __init__(self, settings: Settings, binary: str) -> None:
        self.id = "haproxy-" + uuid4().hex
        self._settings, self._binary = settings, binary
        gateways = [_free_port() for _ in range(max(1, settings.gateway_processes))]
        self.layout = Layout(_folder(settings), settings.gateway_host, settings.gateway_port,
                             settings.haproxy_stats_port or _free_port(), gateways,
                             settings.haproxy_slots, settings.haproxy_slot_servers,
                             settings.haproxy_threads)
        self.api = RuntimeApi(self.layout.admin_socket)
        secret = settings.secret_key.get_secret_value() if settings.secret_key else None
        self.programmer = Programmer(self.api, self.layout, secret_key=secret)
        self.traffic = HaproxyTraffic()
        self._lines: asyncio.Server | None = None
        self._changed = asyncio.Event()
        self._procs: list[asyncio.subprocess.Process] = []
        self._haproxy: asyncio.subprocess.Process | None = None
        self._reported: tuple[dict[str, int], dict[str, int]] | None = None
        self._last_report = 0.0
        self._routes_stale = True  # the table must be read and applied
        self._jumped: set[UUID] = set()  # models whose jump waits to be reported, announced
        self._load: dict[UUID, int] = {}  # in flight per model, as last polled
        self._load_reported: dict[UUID, int] = {}  # ... as of the last report written

    async def run(self) -> None:
        settings = self._settings
        pool = await create_pool(settings.require_database_url(), max_size=2)
        redis = Redis.from_url(settings.require_redis_url(), socket_connect_timeout=1,
                               socket_timeout=5)
        try:
            await self._start()
            tasks = [asyncio.create_task(self._watch(redis)),
                     asyncio.create_task(self._watch_load()),
                     asyncio.create_task(self._supervise())]
            try:
                await self._sync(pool, redis)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self._shutdown(redis)
            await pool.close()

    async def _start(self) -> None:
        for port in self.layout.gateways:
            self._procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.server", env=_gateway_env(self._settings, port),
                preexec_fn=die_with_parent()))
        write(self.layout)
        self._lines = await listen(bind(self.layout.traffic_socket), self.traffic,
                                   self.programmer.owners)
        self._haproxy = await asyncio.create_subprocess_exec(
            self._binary, "-W", "-db", "-f", str(self.layout.config),
            "-S", f"{self.layout.master_socket},mode,600",
            "-p", str(self.layout.folder / "haproxy.pid"), preexec_fn=die_with_parent())
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(RuntimeApiError):
                await self.api.command("show info")
                break
            if self._haproxy.returncode is not None or time.monotonic() > deadline:
                raise SystemExit(f"haproxy did not start (see its output above); "
                                 f"configuration {self.layout.config}")
            await asyncio.sleep(0.05)
        log.info("haproxy_started", port=self.layout.port, stats_port=self.layout.stats_port,
                 folder=str(self.layout.folder), gateways=self.layout.gateways)

    async def _supervise(self) -> None:
        """HAProxy or a Python gateway exiting ends the controller (its supervisor restarts it)."""
        procs = [*self._procs, *([self._haproxy] if self._haproxy else [])]
        waits = [asyncio.create_task(p.wait()) for p in procs]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        log.error("gateway_child_exited",
                  codes=[p.returncode for p in procs if p.returncode is not None])
        os.kill(os.getpid(), signal.SIGTERM)

    async def _watch(self, redis: Redis) -> None:
        """Flag a reload on every routes or access change notice (a model made private is
        an access change too), and every poll interval should one be lost."""
        poll_s = self._settings.routes_poll_s
        while True:
            try:
                async with redis.pubsub() as pubsub:
                    await pubsub.subscribe(ROUTES_CHANNEL, AUTH_CHANNEL)
                    while True:
                        await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll_s)
                        self._routes_stale = True
                        self._changed.set()
            except (RedisError, OSError) as exc:
                log.warning("routes_channel_unavailable", error=str(exc))
                await asyncio.sleep(poll_s)
                self._routes_stale = True
                self._changed.set()

    async def _watch_load(self) -> None:
        """Poll the backends' in-flight counts; flag a jump (see gateway/load_signal.py)."""
        while True:
            await asyncio.sleep(LOAD_POLL_S)
            try:
                self._load = self.programmer.load_by_model(
                    await self.api.backends(self.programmer.in_use))
            except RuntimeApiError:
                continue
            jumped = {model_id for model_id, now in self._load.items()
                      if is_jump(now, self._load_reported.get(model_id, 0))}
            if jumped - self._jumped:
                self._jumped |= jumped
                self._changed.set()

    async def _sync(self, pool: asyncpg.Pool, redis: Redis) -> None:
        """Apply the table when flagged; read `scur`, delete drained servers, report."""
        self._changed.set()
        while True:
            wait_s = DRAIN_POLL_S if self.programmer.draining else HEARTBEAT_S
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._changed.wait()
            jumped, self._jumped = self._jumped, set()
            changed, self._routes_stale = self._routes_stale, False
            self._changed.clear()
            before = self.api.changes
            try:
                if changed:
                    await self.programmer.apply(await self._routes(pool))
                stats, totals = await self.api.rows(self.programmer.in_use)
                self.traffic.count(self.programmer.owners(), totals)
                await self.programmer.reap(stats)
            except (RuntimeApiError, DatabaseError) as exc:
                log.warning("haproxy_sync_failed", error=str(exc))
                continue
            # Written at once when HAProxy was changed or a model jumped; a routes read
            # that changed nothing (the fallback poll, every routes_poll_s) waits its turn.
            await self._report(redis, stats, force=self.api.changes != before or bool(jumped),
                               jumped=jumped)

    async def _routes(self, pool: asyncpg.Pool) -> list[Route]:
        return await deployments.routes(pool)

    def report(self, stats: list[ServerStat], jumped: set[UUID] | None = None) -> GatewayReport:
        carried = self.programmer.carried(stats)
        return GatewayReport(
            gateway_id=self.id, at=time.time(), generations=dict(self.programmer.generations),
            inflight={str(c.replica_id): c.current for c in carried if c.current > 0},
            requests={str(c.replica_id): c.total for c in carried},
            jumped=sorted(str(m) for m in jumped or ()),
            traffic=self.traffic.report(set(self.programmer.owners().values())))

    async def _report(self, redis: Redis, stats: list[ServerStat], force: bool,
                      jumped: set[UUID] | None = None) -> None:
        """Write the report (unless nothing changed within a second); with models that
        `jumped`, name them in it and publish this gateway's id on LOAD_CHANNEL in the same
        round trip."""
        report = self.report(stats, jumped)
        seen = (report.generations, report.inflight)
        if not force and seen == self._reported and time.monotonic() - self._last_report < 1:
            return
        load = dict(self._load)
        try:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.set(GATEWAY_KEY_PREFIX + self.id, report.model_dump_json(),
                         ex=GATEWAY_TTL_S)
                if jumped:
                    pipe.publish(LOAD_CHANNEL, self.id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("gateway_report_failed", error=str(exc))
            return
        self._reported, self._last_report = seen, time.monotonic()
        self._load_reported = load

    async def _shutdown(self, redis: Redis) -> None:
        """HAProxy stops softly (SIGUSR1: it finishes what is in flight), then the gateways.
        The kept stats session is closed first: HAProxy would wait for it too."""
        self.api.close()
        if self._haproxy is not None:
            await _stop(self._haproxy, signal.SIGUSR1)
        if self._lines is not None:
            self._lines.close()
        await asyncio.gather(*(_stop(p, signal.SIGTERM) for p in self._procs))
        with contextlib.suppress(RedisError, OSError):
            await redis.delete(GATEWAY_KEY_PREFIX + self.id)
        await redis.aclose()


def serve_haproxy(settings: Settings) -> None:
    binary = find_haproxy(settings)
    if binary is None:
        raise SystemExit("greenroom gateway --engine haproxy: haproxy not found; install it "
                         "(apt-get install haproxy) or use --engine python")

    async def main() -> None:
        controller = Controller(settings, binary)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await controller.run()

    asyncio.run(main())

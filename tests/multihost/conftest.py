"""Fixtures of the multi-host test bed (tests/multihost/netbed.py): the bed itself, and a
control plane spread over its hosts.

Hosts of the `plane` fixture, each its own network namespace and address:
`data` (Postgres and Redis), `api`, `w1` and `w2` (a worker each, process runtime, their
replicas in the same namespace), `gw` (a gateway), and `client`, where the test process
itself opens its sockets. `swarm_plane` has `n1` and `n2` instead of the workers' hosts,
each with a Docker daemon of its own (tests/multihost/swarm_bed.py), the two a swarm.
Nothing is sent to any other address.
"""

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from pydantic import SecretStr

from db.pool import create_pool
from schemas.settings import Settings
from tests.conftest import REPO, START_TIMEOUT_S, TEST_SECRET_KEY
from tests.multihost.backing import missing_backing, start_postgres, start_redis
from tests.multihost.netbed import Host, NetBed, missing_requirement
from tests.multihost.swarm_bed import Dockerd, form_swarm, load_image, start_dockerd, stop_dockerd
from tests.support.services import create_database, settings_env, wait_for_http

API_PORT = 8000
GATEWAY_PORT = 8001


@pytest.fixture(scope="module")
def netbed() -> Iterator[NetBed]:
    """A fresh bridge for this module's hosts; everything on it is removed after."""
    reason = missing_requirement() or missing_backing()
    if reason:
        pytest.skip(reason)
    bed = NetBed()
    try:
        yield bed
    finally:
        bed.close()


@pytest.fixture(scope="module")
def bed_tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="greenroom-multihost-") as tmp:
        Path(tmp).chmod(0o711)  # Postgres runs as its own user, below this folder
        yield Path(tmp)


@dataclass
class Plane:
    """The control plane across the bed's hosts; `settings[name]` is each process's."""

    bed: NetBed
    hosts: dict[str, Host]
    folder: Path
    base: Settings
    api: str
    gateway: str
    pool: asyncpg.Pool
    settings: dict[str, Settings] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, module: str, host: str, **overrides: Any) -> None:
        """`python -m module` as process `name` in host `host`, with the plane's settings."""
        settings = self.base.model_copy(update=overrides)
        self.settings[name] = settings
        env = settings_env(settings)
        self.procs[name] = self.bed.popen(self.hosts[host], [sys.executable, "-m", module],
                                          env=env, cwd=REPO, log=self.folder / f"{name}.log")

    def start_worker(self, name: str) -> None:
        """Worker `name` in host `name`: its replicas listen and are advertised there. `w1`
        binds every address and advertises its own; the others bind their address."""
        host = self.hosts[name]
        bind = ({"replica_host": "0.0.0.0", "replica_advertise_host": host.address}
                if name == "w1" else {"replica_host": host.address})
        self.start(name, "worker", name, state_dir=self.folder / name / "state", **bind)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        proc.wait(timeout=20)

    async def stop(self, name: str, timeout_s: float = 15) -> None:
        """SIGTERM process `name` and wait for it (SIGKILL after `timeout_s`)."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(name) for name in self.procs))

    def log_tail(self, name: str, lines: int = 30) -> str:
        text = (self.folder / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@contextlib.asynccontextmanager
async def running_plane(bed: NetBed, folder: Path, more_hosts: tuple[str, ...],
                        **overrides: Any) -> AsyncIterator[Plane]:
    """Hosts `data`, `api`, `gw`, `more_hosts` and `client`; Postgres and Redis in `data`,
    the API and a gateway started; the test's sockets open in `client` until the end.
    Workers are the caller's to start (`Plane.start_worker`, `Plane.start`)."""
    names = ("data", "api", "gw", *more_hosts, "client")
    hosts = {name: bed.add_host(name) for name in names}
    admin_dsn = start_postgres(bed, hosts["data"], folder / "postgres")
    redis_url = start_redis(bed, hosts["data"], folder / "redis")
    # The test's thread stays in `client` across every await below, and a thread it starts
    # is born there: the loop's executor threads (aiohttp's getaddrinfo, to_thread) must be
    # the plane's own, shut at the end, or a later test of this session's loop would reuse
    # one and find nothing listening on its 127.0.0.1.
    loop = asyncio.get_running_loop()
    plane_threads = ThreadPoolExecutor(thread_name_prefix="netbed-client")
    loop.set_default_executor(plane_threads)
    try:
        async with _plane_in_client(bed, hosts, folder, admin_dsn, redis_url,
                                    overrides) as plane:
            yield plane
    finally:
        loop.set_default_executor(ThreadPoolExecutor())
        plane_threads.shutdown(wait=False)


@contextlib.asynccontextmanager
async def _plane_in_client(bed: NetBed, hosts: dict[str, Host], folder: Path, admin_dsn: str,
                           redis_url: str, overrides: dict[str, Any]) -> AsyncIterator[Plane]:
    with bed.inside(hosts["client"]):
        dsn = await create_database(admin_dsn, "greenroom")  # migrated
        pool = await create_pool(dsn, max_size=5)
        base = Settings(
            database_url=dsn, redis_url=redis_url, runtime="process",
            secret_key=SecretStr(TEST_SECRET_KEY), cluster=f"multihost-{bed.suffix}",
            deploy_timeout_s=60, drain_timeout_s=5, lease_s=2, reconcile_interval_s=0.3,
            routes_poll_s=0.5, stop_grace_s=2, replica_cgroups=False,
            # Each worker takes at most 3 tasks at once, so 5 at once need two workers.
            worker_max_jobs=3, rollouts_per_user=10, capacity_memory_mb=100_000,
            quota_deployments=50, quota_replicas=100, quota_memory_mb=1_000_000,
        ).model_copy(update=overrides)
        plane = Plane(bed=bed, hosts=hosts, folder=folder, base=base, pool=pool,
                      api=f"http://{hosts['api'].address}:{API_PORT}",
                      gateway=f"http://{hosts['gw'].address}:{GATEWAY_PORT}")
        try:
            plane.start("api", "service", "api", api_host=hosts["api"].address,
                        api_port=API_PORT)
            plane.start("gateway", "gateway.server", "gw", gateway_host=hosts["gw"].address,
                        gateway_port=GATEWAY_PORT)
            async with aiohttp.ClientSession() as http:
                await wait_for_http(http, plane.api + "/healthz", timeout_s=START_TIMEOUT_S)
                await wait_for_http(http, plane.gateway + "/healthz", timeout_s=START_TIMEOUT_S)
            yield plane
        finally:
            await plane.stop_all()
            await pool.close()


@pytest.fixture(scope="module")
async def plane(netbed: NetBed, bed_tmp: Path) -> AsyncIterator[Plane]:
    """Postgres and Redis in `data`, the API in `api`, process-runtime workers in `w1` and
    `w2`, a gateway in `gw`; the test's own sockets open in `client`."""
    async with running_plane(netbed, bed_tmp, ("w1", "w2")) as plane:
        plane.start_worker("w1")
        plane.start_worker("w2")
        yield plane


@dataclass
class SwarmPlane:
    """The control plane on a two-node swarm: dockerd in `n1` (the manager, where the
    worker runs) and in `n2`; `nodes` maps node id to node address."""

    plane: Plane
    manager: Dockerd
    node2: Dockerd
    nodes: dict[str, str]
    image: str


@pytest.fixture(scope="module")
async def swarm_plane(netbed: NetBed, bed_tmp: Path, docker_image: str,
                      ) -> AsyncIterator[SwarmPlane]:
    """Two Docker daemons in hosts `n1` and `n2` forming a swarm, the test image loaded in
    both; the API, a gateway and one worker on the swarm runtime (in `n1`, talking to the
    manager's socket)."""
    async with running_plane(netbed, bed_tmp, ("n1", "n2"), runtime="swarm",
                             replica_memory_mb=256, docker_image=docker_image) as plane:
        daemons: list[Dockerd] = []
        try:
            for name in ("n1", "n2"):
                daemons.append(start_dockerd(netbed, plane.hosts[name], bed_tmp / f"d-{name}"))
            manager, node2 = daemons
            nodes = form_swarm(manager, node2)
            load_image(docker_image, daemons, bed_tmp)
            plane.start("worker", "worker", "n1", docker_url=manager.url,
                        state_dir=bed_tmp / "worker-state")
            yield SwarmPlane(plane=plane, manager=manager, node2=node2, nodes=nodes,
                             image=docker_image)
        finally:
            if "worker" in plane.procs:
                await plane.stop("worker")
            for daemon in reversed(daemons):
                stop_dockerd(daemon)

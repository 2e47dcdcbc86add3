"""Issue 25, review M7 and M13 on a real Docker Engine: a replica container runs as uid
10001 under a CPU limit on its installation's own network with inter-container traffic off,
so another container there cannot reach its port; reached directly it refuses without its
generation's secret while the gateway serves; and a second installation on the same engine
leaves the first one's containers alone."""

# ruff: noqa: F811  (the docker tests' fixtures, imported, are the test functions' arguments)
import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import uuid4

import aiodocker
import aiohttp
import asyncpg
import pytest
from arq.connections import ArqRedis

from db.migrate import apply_migrations
from schemas import replica_auth
from schemas.settings import Settings
from tests.conftest import TEST_CLUSTER, TEST_SECRET_KEY
from tests.support import services
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.docker import (  # noqa: F401
    deploy,
    docker_api,
    docker_image,
    docker_stack,
    embed,
    make_spec,
    runtime,
    skip_without_engine,
    wait_health,
)
from worker import installation, reconciler
from worker.context import WorkerContext
from worker.runtimes.base import ReplicaSpec
from worker.runtimes.docker import DockerRuntime, network_name

skip_without_engine()
pytestmark = pytest.mark.docker

# From inside a container: can it open a TCP connection to (host, port)?
_PROBE = ("import socket, sys\n"
          "try:\n"
          "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
          "    print('reached')\n"
          "except OSError as exc:\n"
          "    print('refused', exc)\n")


def _docker(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120,
                          check=check)


async def _probe(image: str, network: str, host: str, port: int = 8080) -> str:
    run = await asyncio.to_thread(_docker, "run", "--rm", "--network", network, "--entrypoint",
                                  "python", image, "-c", _PROBE, host, str(port))
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def _address(data: dict[str, Any], network: str) -> str:
    address: str = data["NetworkSettings"]["Networks"][network]["IPAddress"]
    assert address, data["NetworkSettings"]
    return address


async def test_replica_runs_as_10001_with_cpus_on_its_network_and_others_cannot_reach_it(
        runtime: DockerRuntime, make_spec: Callable[..., ReplicaSpec],
        docker_api: aiodocker.Docker, docker_image: str) -> None:
    """Before: uid 0, no CPU limit, the default bridge, where any container reached any
    replica's :8080. After: uid 10001, NanoCpus, the installation's network with ICC off."""
    target = await runtime.start(make_spec())
    assert await wait_health(target.endpoint) == 200
    data = await docker_api.containers.container(target.runtime_ref).show()
    network = network_name(TEST_CLUSTER)
    assert data["Config"]["User"] == "10001:10001"
    assert data["HostConfig"]["NanoCpus"] >= 10**9
    assert data["HostConfig"]["NetworkMode"] == network
    uid = _docker("exec", target.runtime_ref, "python", "-c",
                  "import os; print(os.getuid(), os.getgid())", check=True).stdout.split()
    assert uid == ["10001", "10001"]
    options = (await (await docker_api.networks.get(network)).show())["Options"]
    assert options["com.docker.network.bridge.enable_icc"] == "false"

    # Another container on the installation's network (a hostile replica) cannot connect.
    assert (await _probe(docker_image, network, _address(data, network))).startswith("refused")
    # The same probe reaches a container on a network with ICC on: the probe can see it.
    control = f"greenroom-probe-{uuid4().hex[:8]}"
    _docker("network", "create", control, check=True)
    try:
        _docker("network", "connect", control, target.runtime_ref, check=True)
        shown = await docker_api.containers.container(target.runtime_ref).show()
        assert await _probe(docker_image, control, _address(shown, control)) == "reached"
    finally:
        _docker("network", "disconnect", "-f", control, target.runtime_ref)
        _docker("network", "rm", control)


async def test_the_image_itself_runs_as_10001(docker_image: str) -> None:
    run = _docker("image", "inspect", "--format", "{{.Config.User}}", docker_image, check=True)
    assert run.stdout.strip() == "10001:10001"


async def test_docker_replica_reached_directly_refuses_while_the_gateway_serves(
        docker_stack: str, gateway: str, http: aiohttp.ClientSession,
        pool: asyncpg.Pool, hashing_model: Any) -> None:
    model_id = await hashing_model("guarded")
    done = await deploy(http, docker_stack, "alice/guarded")
    assert done["status"] == "done", done
    endpoint = await pool.fetchval(
        "SELECT endpoint FROM replicas WHERE model_id = $1 AND state = 'ready'", model_id)
    async with aiohttp.ClientSession() as direct:
        async with direct.post(f"{endpoint}/embed", json={"inputs": "x"}) as resp:
            assert resp.status == 401, await resp.text()
        secret = replica_auth.generation_secret(TEST_SECRET_KEY, model_id, 1)
        async with direct.post(f"{endpoint}/embed", json={"inputs": "x"},
                               headers={replica_auth.HEADER: secret}) as resp:
            assert resp.status == 200, await resp.text()
    status, _ = await embed(http, gateway, "guarded")
    assert status == 200


@pytest.fixture
async def second_installation(backing: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    """A second installation's database (as `greenroom migrate` leaves it) on the same
    Postgres; dropped afterwards."""
    dsn = await services.create_database(backing["pg"], f"greenroom_second_{uuid4().hex[:8]}")
    await apply_migrations(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    yield pool
    await pool.close()
    await services.drop_database(backing["pg"], dsn)


@pytest.mark.parametrize("cluster", [None, f"shared-{TEST_CLUSTER}"],
                         ids=["default-cluster", "same-cluster-set-by-hand"])
async def test_second_installation_reconciler_leaves_the_first_ones_replicas(
        cluster: str | None, pool: asyncpg.Pool, second_installation: asyncpg.Pool,
        docker_image: str,
        make_spec: Callable[..., ReplicaSpec], docker_api: aiodocker.Docker,
        backing: dict[str, str]) -> None:
    """Review M13: both installations left GREENROOM_CLUSTER unset, so both labelled their
    containers `greenroom`, and the second's reconciler removed the first's replicas as
    orphans (no row in its database). Now each derives its label from its database's
    installation id, and lists (so reaps) only its own; two given the same cluster by hand
    are still told apart by the installation label."""
    base = Settings(runtime="docker", docker_image=docker_image, reconcile_interval_s=0.5,
                    redis_url=backing["redis"], cluster=cluster)
    first = await installation.resolve(base, pool)
    second = await installation.resolve(base, second_installation)
    assert first.installation_id != second.installation_id
    assert (first.cluster == second.cluster) == (cluster is not None)

    first_runtime, second_runtime = DockerRuntime(first), DockerRuntime(second)
    redis = ArqRedis.from_url(backing["redis"])
    ctx = WorkerContext(settings=second, pool=second_installation, redis=redis,
                        runtime=second_runtime, http=aiohttp.ClientSession(),
                        worker_id="second-installation")
    started = await first_runtime.start(make_spec())
    try:
        await reconciler.reconcile_once(ctx)
        await reconciler.reconcile_once(ctx)
        data = await docker_api.containers.container(started.runtime_ref).show()
        assert data["State"]["Running"], "the second installation reaped the first's replica"
        labels = data["Config"]["Labels"]
        assert labels["io.greenroom.installation"] == first.installation_id
        assert started.runtime_ref not in {i.runtime_ref for i in await second_runtime.list()}
        assert started.runtime_ref in {i.runtime_ref for i in await first_runtime.list()}
    finally:
        await first_runtime.remove(started.runtime_ref)
        for rt in (first_runtime, second_runtime):
            await rt.close()
        await ctx.http.close()
        await redis.aclose()
        for name in {network_name(str(s.cluster)) for s in (first, second)}:
            _docker("network", "rm", name)

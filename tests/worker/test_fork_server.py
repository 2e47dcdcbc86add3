"""The process runtime's fork server (worker/runtimes/fork_server.py, model_server/zygote.py):
replicas forked from a warm interpreter, with exactly their own environment, reaped and
stopped as spawned ones are, outliving the zygote; spawned as before whenever the zygote
is off, gone, or a replica's import-time environment differs from the zygote's."""

import asyncio
import contextlib
import json
import os
import signal
import sys
import textwrap
from pathlib import Path
from uuid import uuid4

import aiohttp
import pytest

from schemas.settings import Settings
from tests.support.services import wait_for_http
from worker.runtimes import memory_limit
from worker.runtimes.base import ReplicaSpec, StartedReplica, model_server_env
from worker.runtimes.environment import host_env
from worker.runtimes.fork_server import ROOM_VARIABLE, refusal, zygote_env
from worker.runtimes.process import ProcessRuntime, _pid_alive

REPO = Path(__file__).resolve().parents[2]


def _spec(env: dict[str, str] | None = None, memory_mb: int | None = None) -> ReplicaSpec:
    return ReplicaSpec(replica_id=uuid4(), model_id=uuid4(), model_identifier="test/hash",
                       generation=1, task_id=None, env=env or {}, memory_mb=memory_mb,
                       memory_requested=memory_mb is not None,
                       source={"backend": "hashing", "dimension": 8})


async def _warm(runtime: ProcessRuntime) -> int:
    """The runtime's zygote started and ready to fork: its pid."""
    runtime.warm()
    server = runtime._fork_server
    assert server is not None
    for _ in range(600):
        if server.state == "ready":
            assert server.pid is not None
            return server.pid
        assert server.state == "starting", server.state
        await asyncio.sleep(0.05)
    raise TimeoutError("the zygote did not start")


def _meta(settings: Settings, started: StartedReplica) -> dict[str, object]:
    meta: dict[str, object] = json.loads(
        (settings.state_dir / "replicas" / started.runtime_ref / "meta.json").read_text())
    return meta


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(): v.decode() for k, _, v in pairs}


async def _serves(http: aiohttp.ClientSession, started: StartedReplica) -> None:
    await wait_for_http(http, started.endpoint + "/health", timeout_s=30)
    async with http.post(started.endpoint + "/embed", json={"inputs": "forked"}) as resp:
        assert resp.status == 200, await resp.text()
        assert len((await resp.json())[0]) == 8


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", replica_cgroups=False)


async def test_a_forked_replica_serves_with_exactly_its_own_environment(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # Set in the worker's environment only: neither the zygote nor a replica may hold it.
    monkeypatch.setenv("GREENROOM_WORKER_ONLY_PROBE", "worker-secret")
    runtime = ProcessRuntime(settings)
    zygote = await _warm(runtime)
    spec = _spec({"MY_SETTING": "kept"})
    started = await runtime.start(spec)
    try:
        meta = _meta(settings, started)
        assert meta["started"] == "forked"
        pid = int(str(meta["pid"]))
        async with aiohttp.ClientSession() as http:
            await _serves(http, started)
        folder = settings.state_dir.resolve() / "replicas" / started.runtime_ref
        port = int(started.endpoint.rsplit(":", 1)[1])
        expected = {**model_server_env(spec, settings.replica_host, port),
                    **host_env(home=folder), "GREENROOM_REPLICA_ID": started.runtime_ref}
        assert _environ(pid) == expected, "exactly the replica's environment, nothing more"
        assert "worker-secret" not in Path(f"/proc/{zygote}/environ").read_text(errors="replace")
        assert ROOM_VARIABLE in _environ(zygote), "the zygote's own block keeps the room"
        # Forked from the zygote, in its own session and folder, the zygote single-threaded.
        assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == zygote
        assert os.getsid(pid) == pid and os.getpgid(pid) == pid
        assert Path(os.readlink(f"/proc/{pid}/cwd")) == folder
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:3] == [os.fsencode(sys.executable), b"-m", b"model_server"], cmdline
        assert b"model_server.zygote" in Path(f"/proc/{zygote}/cmdline").read_bytes()
        assert len(os.listdir(f"/proc/{zygote}/task")) == 1
        for name in ("stdout.log", "stderr.log"):
            assert (folder / name).stat().st_mode & 0o777 == 0o600
        info = await runtime.inspect(started.runtime_ref)
        assert info is not None and info.running
        _, stderr = await runtime.logs(started.runtime_ref)
        assert "server_started" in stderr
    finally:
        await runtime.remove(started.runtime_ref)
        await runtime.close()


def _memory_holds(pid: int, needle: bytes) -> bool:
    """Does any writable mapping of `pid` (its heap, its anonymous memory) hold `needle`?"""
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            span, perms = line.split()[:2]
            if not perms.startswith("rw"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            with contextlib.suppress(OSError, ValueError, OverflowError):
                mem.seek(start)
                if needle in mem.read(end - start):
                    return True
    return False


async def test_a_replica_s_environment_never_reaches_the_zygote_nor_the_next_replica(
        settings: Settings) -> None:
    """Every child inherits the zygote's memory: one replica's environment (its job token,
    its deployment's decrypted secrets) must never be in it. The zygote passes each child
    a pipe it does not read."""
    # Long, as a certificate or a key file put in an env var is, and so in memory of its
    # own: a few bytes freed by Python's small-object allocator are soon written over.
    secret = "deployment-secret-" + "".join(uuid4().hex for _ in range(128))
    runtime = ProcessRuntime(settings)
    zygote = await _warm(runtime)
    first = await runtime.start(_spec({"MY_API_KEY": secret}))
    second = await runtime.start(_spec())
    try:
        async with aiohttp.ClientSession() as http:
            await _serves(http, first)
            await _serves(http, second)
        first_pid, second_pid = (int(str(_meta(settings, r)["pid"])) for r in (first, second))
        assert _meta(settings, second)["started"] == "forked"
        assert _environ(first_pid)["MY_API_KEY"] == secret
        assert _memory_holds(first_pid, secret.encode()), "the probe finds what is there"
        assert not _memory_holds(zygote, secret.encode()), "the zygote read a replica's env"
        assert not _memory_holds(second_pid, secret.encode()), "inherited by the next one"
    finally:
        await runtime.remove_many([first.runtime_ref, second.runtime_ref], grace_s=0)
        await runtime.close()


async def test_a_replica_is_known_by_its_environment_or_its_folder(tmp_path: Path) -> None:
    """The runtime's pid check (pid reuse): the replica's id in its environment, or its
    folder as working directory (set before a spawned replica's exec, whose environment
    reads empty or not yet its own for a moment). Another process is neither."""
    folder, elsewhere = tmp_path / "replica", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    ref = str(uuid4())
    sleepers = [await asyncio.create_subprocess_exec("sleep", "30", cwd=cwd, env=env)
                for cwd, env in ((folder, {"OTHER": "1"}), (elsewhere, {"OTHER": "1"}),
                                 (elsewhere, {"GREENROOM_REPLICA_ID": ref}))]
    try:
        in_folder, stranger, named = (_pid_alive(p.pid, ref, folder) for p in sleepers)
        assert in_folder and named and not stranger
        assert not _pid_alive(sleepers[0].pid, ref, elsewhere)
    finally:
        for proc in sleepers:
            proc.kill()
            await proc.wait()
    assert not _pid_alive(sleepers[0].pid, ref, folder), "gone"


async def test_the_first_replica_of_a_fresh_runtime_waits_for_its_zygote(
        settings: Settings) -> None:
    runtime = ProcessRuntime(settings)  # not warmed: the first start begins the zygote
    started = await runtime.start(_spec())
    try:
        assert _meta(settings, started)["started"] == "forked"
        async with aiohttp.ClientSession() as http:
            await _serves(http, started)
    finally:
        await runtime.remove(started.runtime_ref)
        await runtime.close()


async def test_a_forked_replica_exit_code_is_recorded_on_stop_and_on_kill(
        settings: Settings) -> None:
    runtime = ProcessRuntime(settings)
    await _warm(runtime)
    stopped, killed = await runtime.start(_spec()), await runtime.start(_spec())
    try:
        async with aiohttp.ClientSession() as http:
            await _serves(http, stopped)
            await _serves(http, killed)
        await runtime.stop(stopped.runtime_ref, grace_s=5)
        info = await runtime.inspect(stopped.runtime_ref)
        assert info is not None and not info.running and info.exit_code == 0, info
        folder = settings.state_dir / "replicas" / stopped.runtime_ref
        assert (folder / "exit_code").read_text() == "0"

        os.kill(int(str(_meta(settings, killed)["pid"])), signal.SIGKILL)
        for _ in range(100):  # the kill lands in its own time
            info = await runtime.inspect(killed.runtime_ref)
            if info is None or not info.running:
                break
            await asyncio.sleep(0.05)
        assert info is not None and not info.running and info.exit_code == -9, info
    finally:
        await runtime.remove_many([stopped.runtime_ref, killed.runtime_ref], grace_s=0)
        await runtime.close()


async def test_replicas_outlive_their_zygote_and_later_ones_are_spawned(
        settings: Settings) -> None:
    runtime = ProcessRuntime(settings)
    zygote = await _warm(runtime)
    first = await runtime.start(_spec())
    second = None
    try:
        assert _meta(settings, first)["started"] == "forked"
        os.kill(zygote, signal.SIGKILL)
        server = runtime._fork_server
        assert server is not None
        for _ in range(100):
            if server.state == "dead":
                break
            await asyncio.sleep(0.05)
        assert server.state == "dead"
        async with aiohttp.ClientSession() as http:
            await _serves(http, first)
            second = await runtime.start(_spec())
            assert _meta(settings, second)["started"] == "spawned"
            await _serves(http, second)
        info = await runtime.inspect(first.runtime_ref)
        assert info is not None and info.running
        await runtime.stop(first.runtime_ref, grace_s=5)  # found by its environment still
        info = await runtime.inspect(first.runtime_ref)
        assert info is not None and not info.running
        assert not _alive(int(str(_meta(settings, first)["pid"])))
    finally:
        await runtime.remove_many([first.runtime_ref] + ([second.runtime_ref] if second else []),
                                  grace_s=0)
        await runtime.close()


async def test_with_the_fork_server_off_replicas_are_spawned(settings: Settings) -> None:
    runtime = ProcessRuntime(settings.model_copy(update={"replica_fork_server": False}))
    runtime.warm()  # nothing to warm
    started = await runtime.start(_spec())
    try:
        meta = _meta(settings, started)
        assert meta["started"] == "spawned"
        async with aiohttp.ClientSession() as http:  # past its exec
            await _serves(http, started)
        cmdline = Path(f"/proc/{meta['pid']}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:3] == [b"-m", b"model_server"]
        assert not (settings.state_dir / "zygote").exists(), "no zygote was started"
    finally:
        await runtime.remove(started.runtime_ref)
        await runtime.close()


async def test_a_replica_whose_import_time_variables_differ_is_spawned(
        settings: Settings) -> None:
    runtime = ProcessRuntime(settings)
    await _warm(runtime)
    # numpy's BLAS reads it at import: the zygote's would not be this replica's.
    started = await runtime.start(_spec({"OMP_NUM_THREADS": "3"}))
    try:
        meta = _meta(settings, started)
        assert meta["started"] == "spawned"
        async with aiohttp.ClientSession() as http:  # past its exec: its environ is its own
            await _serves(http, started)
        assert _environ(int(str(meta["pid"])))["OMP_NUM_THREADS"] == "3"
    finally:
        await runtime.remove(started.runtime_ref)
        await runtime.close()


def test_which_environments_the_zygote_refuses(tmp_path: Path) -> None:
    from model_server import zygote as zygote_module

    assert zygote_module.ROOM_VARIABLE == ROOM_VARIABLE, "the two sides name the room alike"
    zygote = zygote_env(tmp_path)
    replica = {**host_env(home=tmp_path / "r"), "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "MODEL_SERVER_BACKEND": "onnx", "MY_SETTING": "x"}
    assert refusal(zygote, replica) is None, "HOME and run-time settings may differ"
    assert "OPENBLAS_NUM_THREADS" in str(refusal(zygote, {**replica,
                                                          "OPENBLAS_NUM_THREADS": "4"}))
    assert "AIOHTTP_NO_EXTENSIONS" in str(refusal(zygote, {**replica,
                                                           "AIOHTTP_NO_EXTENSIONS": "1"}))
    assert "PYTHONPATH" in str(refusal(zygote, {**replica, "PYTHONPATH": "/elsewhere"}))
    assert "room" in str(refusal(zygote, {**replica, "BIG": "x" * 130_000}))


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "rlimit"])
async def test_a_forked_replica_runs_inside_its_memory_limit(
        settings: Settings, cgroups: bool) -> None:
    if cgroups:
        probe = memory_limit.prepare("probe", 256)
        memory_limit.release(str(probe.cgroup) if probe.cgroup else None)
        if probe.kind == "rlimit":
            pytest.skip("this host lets us make no cgroup")
    runtime = ProcessRuntime(settings.model_copy(update={"replica_cgroups": cgroups}))
    await _warm(runtime)
    started = await runtime.start(_spec(memory_mb=512))
    try:
        meta = _meta(settings, started)
        assert meta["started"] == "forked"
        pid = int(str(meta["pid"]))
        if cgroups:
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
            assert f"greenroom-{started.runtime_ref}" in cgroup, cgroup
        else:
            limits = Path(f"/proc/{pid}/limits").read_text()
            line = next(x for x in limits.splitlines() if x.startswith("Max address space"))
            assert line.split()[3:5] == [str(512 * 2**20)] * 2, line
        async with aiohttp.ClientSession() as http:
            await _serves(http, started)
    finally:
        await runtime.remove(started.runtime_ref)
        await runtime.close()


async def test_under_an_rlimit_below_the_zygote_s_size_a_replica_is_spawned(
        settings: Settings) -> None:
    """A child would start over (or at) such a limit, and fail in whatever it does next;
    spawned, it fails as before, with the out-of-memory error the runtime reads."""
    runtime = ProcessRuntime(settings)
    await _warm(runtime)
    started = await runtime.start(_spec(memory_mb=160))
    try:
        assert _meta(settings, started)["started"] == "spawned"
    finally:
        await runtime.remove(started.runtime_ref)
        await runtime.close()


WORKER = """
import asyncio, json, sys
from pathlib import Path
from uuid import uuid4
from schemas.settings import Settings
from worker.runtimes.base import ReplicaSpec
from worker.runtimes.process import ProcessRuntime, _pid_alive

async def main():
    runtime = ProcessRuntime(Settings(state_dir=Path(sys.argv[1]), replica_cgroups=False))
    runtime.warm()
    while runtime._fork_server.state != "ready":
        await asyncio.sleep(0.05)
    spec = ReplicaSpec(replica_id=uuid4(), model_id=uuid4(), model_identifier="t/h",
                       generation=1, task_id=None, source={"backend": "hashing", "dimension": 8})
    started = await runtime.start(spec)
    print("STARTED", json.dumps({"zygote": runtime._fork_server.pid, "ref": started.runtime_ref,
                      "endpoint": started.endpoint}), flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_the_zygote_ends_with_its_worker_and_its_replicas_run_on(tmp_path: Path) -> None:
    state = tmp_path / "state"
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(WORKER), str(state), stdout=asyncio.subprocess.PIPE,
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    replica = None
    try:
        assert worker.stdout is not None
        line = ""
        while not line.startswith("STARTED "):  # after the runtime's own log lines
            line = (await asyncio.wait_for(worker.stdout.readline(), 60)).decode()
            assert line, "the worker ended"
        started = json.loads(line.removeprefix("STARTED "))
        replica = json.loads((state / "replicas" / started["ref"] / "meta.json")
                             .read_text())["pid"]
        worker.kill()  # no goodbye: the zygote sees its socket's end of file
        await worker.wait()
        for _ in range(100):
            if not _alive(started["zygote"]):
                break
            await asyncio.sleep(0.05)
        assert not _alive(started["zygote"]), "the zygote outlived its worker"
        async with aiohttp.ClientSession() as http:
            await wait_for_http(http, started["endpoint"] + "/health", timeout_s=30)
        assert _alive(replica)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        if replica is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(replica, signal.SIGKILL)

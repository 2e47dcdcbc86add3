"""Issue 19, must-show 4: Ctrl-C on `greenroom up` leaves nothing running that it started,
and the next `up` brings the same deployments back, serving."""

import asyncio
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from db import users
from schemas.tokens import issue_user_token
from tests.conftest import bearer
from worker.runtimes.process import free_port

REPO = Path(__file__).resolve().parents[2]
SECRET = "greenroom-up-stop-test-secret-0123456789"
EXTRA = ("h1", "h2", "h3")


class Up:
    """A `greenroom up` process whose printed lines are read as they come."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launch.cli", "up"], cwd=REPO, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)

    def until(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "up exited:\n" + "".join(self.lines)
                continue
            self.lines.append(line)
            if text in line:
                return line
        raise TimeoutError(f"up printed no {text!r}:\n" + "".join(self.lines))

    def drain(self) -> str:
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return "".join(self.lines)


def _ours(state_dir: Path) -> dict[int, str]:
    """pid → command line of every live process that names this test's state folder in its
    command line or environment: up's children, replicas, embedded Redis and Postgres."""
    marker = str(state_dir.resolve()).encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            raw = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z" and marker in raw:
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return found


def _is_replica(pid: int) -> bool:
    """A replica, spawned or forked, and not the worker's zygote (model_server/zygote.py,
    which names model_server too): its environment names its replica id."""
    try:
        return b"GREENROOM_REPLICA_ID=" in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def _dsn(state_dir: Path) -> str:
    """The embedded Postgres's address, read from its pid file (holding no pgserver handle,
    which would keep the server alive past `up`)."""
    from pgserver.postgres_server import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata((state_dir / "postgres").resolve())
    assert info is not None
    return str(info.get_uri())


async def _deploy_three(base: str, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        user = await users.create(conn, username="carol", password_hash="")
    finally:
        await conn.close()
    headers = bearer(issue_user_token(SECRET, user.id))
    async with aiohttp.ClientSession(base, headers=headers) as http:
        task_ids = []
        for name in EXTRA:
            async with http.post("/api/v2/models", json={
                    "name": name, "access_level": "public",
                    "source": {"backend": "hashing", "dimension": 16}}) as resp:
                assert resp.status == 201, await resp.text()
            async with http.post("/deploy", json={"embedding_model_id": f"carol/{name}"}) as resp:
                assert resp.status == 202, await resp.text()
                task_ids.append((await resp.json())["task_id"])
        for task_id in task_ids:
            for _ in range(600):
                async with http.get(f"/deploy/{task_id}") as resp:
                    task = await resp.json()
                if task["status"] not in ("pending", "processing"):
                    break
                await asyncio.sleep(0.1)
            assert task["status"] == "done", task


async def _all_serve(base: str) -> None:
    async with aiohttp.ClientSession(base) as http:
        for name in EXTRA:
            async with http.post(f"/serve/{name}/embed", json={"inputs": "back"}) as resp:
                assert resp.status == 200, (name, await resp.text())
                assert len((await resp.json())[0]) == 16


async def _serves_again(gateway: str, timeout_s: float) -> None:
    """The restarted gateway answers an embedding of the restored routes."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(gateway) as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.post(f"/serve/{EXTRA[0]}/embed", json={"inputs": "x"}) as resp:
                    if resp.status == 200:
                        return
            assert time.monotonic() < deadline, "the restarted gateway never served"
            await asyncio.sleep(0.2)


def _interrupt(up: Up, times: int, timeout_s: float) -> float:
    began = time.monotonic()
    for _ in range(times):
        up.proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
    up.proc.wait(timeout=timeout_s)
    return time.monotonic() - began


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_stops_everything_and_the_next_up_restores_the_deployments(
        embedded_tmp: Path) -> None:
    state = embedded_tmp / "state"
    port, gateway_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    env |= {"GREENROOM_STATE_DIR": str(state), "GREENROOM_API_PORT": str(port),
            "GREENROOM_GATEWAY_PORT": str(gateway_port),
            "GREENROOM_SECRET_KEY": SECRET, "GREENROOM_RECONCILE_INTERVAL_S": "0.5"}
    base, gateway = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{gateway_port}"
    runs: list[Up] = []
    try:
        up = Up(env)
        runs.append(up)
        up.until("running; Ctrl-C stops everything", 240)
        asyncio.run(_deploy_three(base, _dsn(state)))
        before = _ours(state)
        replicas = [pid for pid in before if _is_replica(pid)]
        assert len(replicas) == 4, before  # the bundled model and the three

        # A child that dies is started again (launch/supervise.py): the gateway, SIGKILLed.
        [dead] = [pid for pid, cmd in before.items() if cmd.endswith("-m gateway.server ")]
        os.kill(dead, signal.SIGKILL)
        up.until("gateway exited (code -9); starting it again", 30)
        asyncio.run(_serves_again(gateway, 60))
        assert dead not in _ours(state)

        took = _interrupt(up, 1, 120)
        out = up.drain()
        print(out[-1500:])
        print(f"orderly stop took {took:.1f}s")
        assert up.proc.returncode == 0, out
        assert "stopped 4 replica(s) of 4 deployment(s)" in out, out
        assert _ours(state) == {}, "nothing started by up survives it"

        again = Up(env)
        runs.append(again)
        again.until("restored 3 deployment(s), serving: h1, h2, h3", 240)
        again.until("running; Ctrl-C stops everything", 60)
        asyncio.run(_all_serve(gateway))

        # A second Ctrl-C: no grace periods, but the replicas it knows are still killed.
        took = _interrupt(again, 2, 60)
        out = again.drain()
        print(out[-800:])
        print(f"stop after a second Ctrl-C took {took:.1f}s")
        assert "second interrupt" in out and "stopped 4 replica(s)" in out, out
        assert _ours(state) == {}, "nothing survives a hurried stop either"
    finally:
        for run in runs:
            if run.proc.poll() is None:
                os.killpg(run.proc.pid, signal.SIGKILL)
        for pid in _ours(state):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

"""H2: the pickled-job attack of the security review, against the Redis Greenroom starts.

The attack writes a pickled object as an arq job (`psetex arq:job:<id>`) and queues it
(`zadd greenroom:queue`); arq's default deserialiser, `pickle.loads`, would run its
`__reduce__` in the worker. Now every Redis Greenroom starts refuses a client without its
password (embedded and compose's), and even a writer holding the password only queues data:
jobs and results are JSON, so the worker refuses the job and runs on.
"""

import ast
import asyncio
import os
import pickle
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis
import yaml
from arq import func
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job, SerializationError
from arq.worker import Worker
from pydantic import SecretStr
from redis.asyncio import ConnectionPool

from launch import up
from launch.embedded import CONFIG_FILE, PASSWORD_FILE, REDIS_USER, start_redis
from schemas.errors import Unavailable
from schemas.queue import JOB_REPLICA_LOGS, QUEUE_NAME, decode_job, encode_job
from schemas.settings import Settings
from service.domain import bazaar
from tests.conftest import Proc
from worker.runtimes.process import free_port

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """The review's payload: unpickling it runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


def _plant(client: redis.Redis, job_id: str, marker: Path) -> None:
    """The review's H2 reproduction, word for word but the marker's path."""
    client.psetex(f"arq:job:{job_id}", 60_000, pickle.dumps(Payload(f"id > {marker}")))
    client.zadd(QUEUE_NAME, {job_id: int(time.time() * 1000)})


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture
def embedded_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    url, proc = start_redis(tmp_path / "redis")
    yield url, proc
    proc.terminate()
    proc.wait(10)


def test_embedded_redis_refuses_the_pickled_job_without_the_password(
        embedded_redis: tuple[str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    url, proc = embedded_redis
    marker = tmp_path / "pwned"
    anonymous = redis.Redis(port=_port(url))
    with pytest.raises(redis.AuthenticationError, match="Authentication required"):
        _plant(anonymous, "pwn", marker)
    for user, password in ((None, "guess"), ("default", "guess"), (REDIS_USER, "guess")):
        with pytest.raises(redis.AuthenticationError, match="invalid username-password"):
            redis.Redis(port=_port(url), username=user, password=password).ping()
    owner = redis.Redis.from_url(url)
    assert owner.exists("arq:job:pwn") == 0 and owner.zcard(QUEUE_NAME) == 0
    # The password is in no command line another local account could read.
    password = (tmp_path / "redis" / PASSWORD_FILE).read_text().strip()
    assert password not in Path(f"/proc/{proc.pid}/cmdline").read_text()
    assert password not in (tmp_path / "redis" / CONFIG_FILE).read_text()


def test_redis_password_is_private_and_the_same_after_a_restart(tmp_path: Path) -> None:
    folder = tmp_path / "redis"
    urls = []
    for _ in range(2):
        url, proc = start_redis(folder)
        try:
            assert redis.Redis.from_url(url).ping()
            urls.append(url)
        finally:
            proc.terminate()
            proc.wait(10)
    password = (folder / PASSWORD_FILE).read_text().strip()
    assert len(password) >= 32
    assert urls[0].split("@")[0] == urls[1].split("@")[0], "one password, reused"
    assert f"{REDIS_USER}:{password}@" in urls[0]
    for name in (PASSWORD_FILE, CONFIG_FILE):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name


def test_up_prints_the_redis_url_without_its_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(database_url="postgresql://unused/none", state_dir=tmp_path / "state",
                        worker_metrics_port=free_port("127.0.0.1"),
                        secret_key=SecretStr("x" * 40))
    keep: list[Any] = []
    try:
        env = up._environment(settings, keep)
    finally:
        for proc in keep:
            proc.terminate()
    printed = capsys.readouterr().out
    password = (tmp_path / "state" / "redis" / PASSWORD_FILE).read_text().strip()
    assert password in env["GREENROOM_REDIS_URL"], "the children get the password"
    assert "embedded Redis at redis://greenroom:***@127.0.0.1:" in printed, printed
    assert password not in printed


async def test_worker_does_not_run_a_pickled_job_even_from_a_writer_with_the_password(
        spawn: Callable[..., Proc], settings: Settings, clean: None, tmp_path: Path) -> None:
    """The real worker process, and the attack written with the right credentials."""
    url = settings.require_redis_url()
    assert "@" in url, "the tests' Redis is the product's password-protected one"
    worker = spawn("worker")
    marker = tmp_path / "pwned"
    client = redis.Redis.from_url(url)
    _plant(client, "pwn", marker)
    deadline = time.monotonic() + 60
    while client.zscore(QUEUE_NAME, "pwn") is not None and time.monotonic() < deadline:
        assert worker.popen.poll() is None, worker.log.read_text()
        await asyncio.sleep(0.2)
    assert client.zscore(QUEUE_NAME, "pwn") is None, "the worker took the job off the queue"
    await asyncio.sleep(1)
    assert not marker.exists(), "the pickled job ran in the worker"
    assert worker.popen.poll() is None, "the worker keeps running"
    log = worker.log.read_text()
    assert "deserializing job pwn failed" in log
    # ...and still answers a real job, whose result the API reads as JSON.
    arq = ArqRedis(ConnectionPool.from_url(url), default_queue_name=QUEUE_NAME,
                   job_serializer=encode_job, job_deserializer=decode_job)
    try:
        assert await bazaar.replica_logs(arq, uuid4(), 10, "tester") == []
    finally:
        await arq.aclose()
    password = url.split(":")[2].split("@")[0]
    assert password not in worker.log.read_text(), "the password is in no log line"


async def test_api_reads_a_planted_pickled_result_as_an_error_not_as_code(
        backing: dict[str, str], clean: None, tmp_path: Path) -> None:
    """A pickled result where the API will look for a logs job's: refused, never loaded."""
    marker = tmp_path / "pwned"
    model = uuid4()
    client = redis.Redis.from_url(backing["redis"])
    client.psetex(f"arq:result:logs:{model}:10", 60_000,
                  pickle.dumps(Payload(f"id > {marker}")))
    arq = ArqRedis(ConnectionPool.from_url(backing["redis"]), default_queue_name=QUEUE_NAME,
                   job_serializer=encode_job, job_deserializer=decode_job)
    try:
        with pytest.raises(Unavailable):
            await bazaar.replica_logs(arq, model, 10, "tester")
    finally:
        await arq.aclose()
    assert not marker.exists()


async def test_a_failed_jobs_result_is_json_and_reads_back_as_its_error_text(
        backing: dict[str, str], clean: None) -> None:
    """arq stores the exception of a failed job in its result: as text, not a pickle."""
    async def broken(ctx: dict[str, Any], model_id: str, tail: int) -> None:
        raise RuntimeError(f"no logs for {model_id}")

    worker = Worker(functions=[func(broken, name=JOB_REPLICA_LOGS, keep_result=5)],
                    queue_name=QUEUE_NAME, redis_settings=RedisSettings.from_dsn(backing["redis"]),
                    job_serializer=encode_job, job_deserializer=decode_job, burst=True,
                    poll_delay=0.05, handle_signals=False)
    arq = ArqRedis(ConnectionPool.from_url(backing["redis"]), default_queue_name=QUEUE_NAME,
                   job_serializer=encode_job, job_deserializer=decode_job)
    try:
        job = await arq.enqueue_job(JOB_REPLICA_LOGS, "m-1", 5, _job_id="failing")
        assert job is not None
        await worker.main()
        raw = await arq.get("arq:result:failing")
        assert raw is not None and decode_job(raw)["r"] == "RuntimeError: no logs for m-1"
        reader = Job("failing", arq, _queue_name=QUEUE_NAME, _deserializer=decode_job)
        with pytest.raises(SerializationError, match="RuntimeError: no logs for m-1"):
            await reader.result(poll_delay=0.05)
    finally:
        await worker.close()
        await arq.aclose()


# --- compose's Redis ------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[?-])([^}]*))?\}")


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution, for the forms the compose files use."""
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, kind, word = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        if kind in (":?", "?") and not value:
            raise ValueError(f"required variable {name} is missing a value: {word}")
        return value if value else (word if kind in (":-", "-") else "")
    return _VARIABLE.sub(one, text)


def _stack_config(path: Path, env: dict[str, str]) -> dict[str, Any] | None:
    """Docker's own reading of a compose file, where a docker CLI that reads it is here."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    for command in ([docker, "compose", "-f", str(path), "config"],
                    [docker, "stack", "config", "-c", str(path)]):
        done = subprocess.run(command, env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=60, check=False)
        if done.returncode == 0:
            loaded: dict[str, Any] = yaml.safe_load(done.stdout)
            return loaded
    return None


@pytest.mark.parametrize("compose_file", ["compose.yaml", "compose.stack.yaml"])
def test_compose_redis_refuses_a_client_without_the_password(compose_file: str,
                                                             tmp_path: Path) -> None:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.skip("no redis-server here to run compose's Redis command with")
    path = REPO / compose_file
    config = yaml.safe_load(path.read_text())
    password = "compose-" + uuid4().hex
    env = {"GREENROOM_REDIS_PASSWORD": password, "GREENROOM_SECRET_KEY": "k" * 40}
    service = config["services"]["redis"]
    assert "${GREENROOM_REDIS_PASSWORD:?" in service["environment"]["GREENROOM_REDIS_PASSWORD"], \
        "compose refuses to start without the password"
    command = [_interpolate(str(arg), env) for arg in service["command"]]
    assert password not in " ".join(command), "the password is on no command line"
    docker_view = _stack_config(path, env)
    if docker_view is not None:
        assert [str(a) for a in docker_view["services"]["redis"]["command"]] == command
    assert command[:2] == ["sh", "-c"], command
    port = free_port("127.0.0.1")
    # The script execs `redis-server` (the image's); here the machine's, first on PATH.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-server").symlink_to(server)
    proc = subprocess.Popen([*command, "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(tmp_path)], stdout=(tmp_path / "redis.log").open("w"),
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                                 "GREENROOM_REDIS_PASSWORD": password})
    try:
        _wait_port(port, proc, tmp_path / "redis.log")
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert "redis-server" in cmdline and password not in cmdline, cmdline
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            _plant(redis.Redis(port=port), "pwn", tmp_path / "pwned")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, password="greenroom").ping()
        for name, svc in config["services"].items():
            raw = (svc.get("environment") or {}).get("GREENROOM_REDIS_URL")
            if raw is None:
                continue
            url = _interpolate(raw, env).replace("@redis:6379", f"@127.0.0.1:{port}")
            assert password in url, name
            assert redis.Redis.from_url(url).ping(), name
        health = (service.get("healthcheck") or {}).get("test")
        if health:
            assert health[0] == "CMD-SHELL"
            check = _interpolate(health[1], env).replace("redis-cli", f"{cli} -p {port}")
            ok = subprocess.run(["sh", "-c", check], env={**os.environ, **env}, timeout=10,
                                check=False)
            assert ok.returncode == 0, "the healthcheck passes with the password"
            bad = subprocess.run(["sh", "-c", check], env={**os.environ,
                                 "GREENROOM_REDIS_PASSWORD": "wrong"}, timeout=10,
                                 check=False, capture_output=True)
            assert bad.returncode != 0, "and fails without it"
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(log.read_text())


# --- one serializer for every arq client ----------------------------------------------------

_PRODUCT = ("service", "edge", "worker", "gateway", "launch", "schemas", "db", "bench")
_ARQ_CLIENTS = {"ArqRedis", "create_pool", "create_arq_pool", "Worker", "ResilientWorker"}


def _arq_calls(tree: ast.AST) -> list[ast.Call]:
    arq_names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("arq"):
            arq_names |= {alias.asname or alias.name for alias in node.names}
    arq_names |= {"ResilientWorker"}
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name) and node.func.id in arq_names & _ARQ_CLIENTS]


def test_every_arq_client_in_the_code_encodes_jobs_as_json_and_nothing_imports_pickle() -> None:
    """Every arq pool, client and worker the code makes passes schemas/queue.py's JSON
    serializer (or the worker settings that carry it); no module imports pickle."""
    from worker.settings import worker_settings

    unencoded, pickling = [], []
    for package in _PRODUCT:
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for call in _arq_calls(tree):
                keywords = {k.arg for k in call.keywords}
                if None not in keywords and not {"job_serializer", "job_deserializer"} <= keywords:
                    unencoded.append(f"{path.relative_to(REPO)}:{call.lineno}")
            for node in ast.walk(tree):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                    if any(n.split(".")[0] in ("pickle", "cPickle", "dill") for n in names):
                        pickling.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not unencoded, f"arq clients with arq's default (pickle) serializer: {unencoded}"
    assert not pickling, f"modules importing pickle: {pickling}"
    kwargs = worker_settings(Settings(redis_url="redis://x:y@127.0.0.1:1/0"))
    assert (kwargs["job_serializer"], kwargs["job_deserializer"]) == (encode_job, decode_job)

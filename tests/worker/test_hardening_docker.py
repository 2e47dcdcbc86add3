"""Issue 12 on Docker: a replica's environment is an allowlist, its container is hardened, and
a hostile image that dumps what it can reach finds no control-plane secret."""

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiodocker
import aiohttp
import asyncpg
import pytest

from schemas.models import ModelSource
from schemas.settings import Settings
from service.domain.registration import register
from tests.conftest import TEST_CLUSTER, TEST_SECRET_KEY, bearer
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.docker import (
    containers_of,
    deploy,
    image_running,
    skip_without_engine,
    wait_health,
)
from worker.runtimes.base import ReplicaSpec
from worker.runtimes.docker import DockerRuntime, network_name

skip_without_engine()
pytestmark = pytest.mark.docker

CONTROL_PLANE = ("GREENROOM_SECRET_KEY", "GREENROOM_DATABASE_URL", "GREENROOM_REDIS_URL")


async def test_container_env_is_an_allowlist_and_host_config_is_hardened(
        runtime: DockerRuntime, make_spec: Callable[..., ReplicaSpec],
        docker_api: aiodocker.Docker, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    spec = make_spec(env={"GREENROOM_JOB_TOKEN": "job-token", "GREENROOM_MODEL_ID": "m",
                          "GREENROOM_SECRET_KEY": "smuggled", "MY_SETTING": "kept"},
                     source={"backend": "hashing", "dimension": 16, "location": str(model_dir)})
    started = await runtime.start(spec)
    data = await docker_api.containers.container(started.runtime_ref).show()
    env = dict(item.split("=", 1) for item in data["Config"]["Env"])
    assert env["GREENROOM_JOB_TOKEN"] == "job-token" and env["MY_SETTING"] == "kept"
    assert env["MODEL_SERVER_BACKEND"] == "hashing" and env["MODEL_SERVER_PORT"] == "8080"
    for name in CONTROL_PLANE:
        assert name not in env, f"{name} reached the container"

    host = data["HostConfig"]
    # Issue 25 (M7): the installation's own network (was the default "bridge"), a CPU
    # limit and a non-root user.
    assert host["Privileged"] is False and host["NetworkMode"] == network_name(TEST_CLUSTER)
    assert host["NanoCpus"] > 0 and data["Config"]["User"] == "10001:10001"
    assert host["ReadonlyRootfs"] is True and "/tmp" in host["Tmpfs"]
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["Memory"] == host["MemorySwap"] == Settings().replica_memory_mb * 2**20
    assert host["PidsLimit"] == Settings().replica_pids_limit
    assert host["Binds"] == [f"{model_dir.resolve()}:/model:ro"], "only the model, read-only"
    assert not any("docker.sock" in m["Source"] for m in data["Mounts"])
    # The model server runs under all of that.
    assert await wait_health(started.endpoint) == 200


# What a hostile image does before serving: print everything it can find that would let it
# reach the control plane, and tokens it forges with keys it guesses.
GUESSES = ["", "secret", "greenroom", "changeme", "job-token-as-key"]
_SNOOP = """
import base64, glob, hashlib, hmac, json, os, time
def b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
def issue_user_token(secret, user_id):  # Greenroom's scheme, copied by the attacker
    key = hmac.new(secret.encode(), b"greenroom:jwt", hashlib.sha256).digest()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    now = int(time.time())
    body = b64(json.dumps({"iss": "greenroom", "iat": now, "exp": now + 3600, "typ": "user",
                           "sub": str(user_id)}).encode())
    sig = b64(hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"
found = {"env": dict(os.environ), "files": {}}
paths = ["/proc/1/environ", "/var/run/docker.sock", "/run/docker.sock"]
for path in paths + glob.glob("/app/.greenroom/*"):
    try:
        found["files"][path] = open(path, "rb").read(4096).decode(errors="replace")
    except OSError as exc:
        found["files"][path] = "ERR " + type(exc).__name__
try:
    open("/etc/owned", "w").write("x"); found["rootfs_writable"] = True
except OSError:
    found["rootfs_writable"] = False
guesses = GUESSES
guesses[-1] = os.environ.get("GREENROOM_JOB_TOKEN", "")
found["forged"] = [issue_user_token(k, os.environ["TARGET_USER"]) for k in guesses]
print("SNOOP " + json.dumps(found), flush=True)
import runpy
runpy.run_module("model_server", run_name="__main__")
""".replace("GUESSES", repr(GUESSES))


@pytest.fixture
def snoop_image(docker_image: str) -> Iterator[str]:
    tag = image_running(docker_image, _SNOOP,
                        f"greenroom/model-server:test-snoop-{uuid4().hex[:8]}")
    yield tag
    subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, check=False)


async def test_hostile_image_finds_no_secret_and_its_forged_tokens_are_refused(
        docker_stack: str, snoop_image: str, http: aiohttp.ClientSession, pool: asyncpg.Pool,
        docker_api: aiodocker.Docker, settings: Settings) -> None:
    # Only an administrator may name an image; the admin here trusts it to run, not to read.
    model = await register(pool, "admin", "snoop",
                           ModelSource(backend="hashing", dimension=16, image=snoop_image))
    admin_id = await pool.fetchval("SELECT id FROM users WHERE username = 'admin'")
    done = await deploy(http, docker_stack, "admin/snoop",
                        {"env": {"TARGET_USER": str(admin_id)}})
    assert done["status"] == "done", done
    (data,) = await containers_of(docker_api, model.id)
    logs = "".join(await docker_api.containers.container(data["Id"]).log(stdout=True))
    line = next(line for line in logs.splitlines() if line.startswith("SNOOP "))
    found = json.loads(line.removeprefix("SNOOP "))

    everything = line
    assert TEST_SECRET_KEY not in everything
    assert settings.database_url and settings.database_url not in everything
    assert settings.redis_url and settings.redis_url not in everything
    for name in CONTROL_PLANE:
        assert name not in found["env"]
    assert found["env"]["GREENROOM_JOB_TOKEN"], "the job token is its one credential"
    assert all(v.startswith("ERR") for k, v in found["files"].items() if "docker" in k)
    assert found["rootfs_writable"] is False

    # The same forgery with the real key would be an admin: the scheme is right, the key not.
    scope: dict[str, Any] = {}
    exec(_SNOOP.split("found =")[0], scope)  # the image's own forging code
    real = bearer(scope["issue_user_token"](TEST_SECRET_KEY, admin_id))
    async with aiohttp.ClientSession() as anon, anon.get(
            f"{docker_stack}/api/v2/users", headers=real) as resp:
        assert resp.status == 200
    for forged in found["forged"]:
        async with aiohttp.ClientSession() as anon, anon.get(
                f"{docker_stack}/api/v2/users", headers=bearer(forged)) as resp:
            assert resp.status == 401, await resp.text()


async def test_model_folder_is_mounted_read_only_at_slash_model(
        runtime: DockerRuntime, make_spec: Callable[..., ReplicaSpec],
        docker_api: aiodocker.Docker, tmp_path: Path) -> None:
    """An uploaded model's store folder reaches the container, and nothing can change it."""
    folder = tmp_path / "models" / str(uuid4())
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"uploaded": true}')
    spec = make_spec(source={"backend": "hashing", "dimension": 16, "location": str(folder)})
    started = await runtime.start(spec)
    assert await wait_health(started.endpoint) == 200
    probe = ("import os, json\n"
             "print(json.dumps({'env': os.environ['MODEL_SERVER_MODEL'],"
             " 'config': open('/model/config.json').read()}))\n"
             "for path in ('/model/new', '/app/new', '/etc/new'):\n"
             "    try:\n        open(path, 'w')\n        print('WROTE', path)\n"
             "    except OSError as exc:\n        print('REFUSED', path, exc.errno)\n")
    container = docker_api.containers.container(started.runtime_ref)
    run = await container.exec(cmd=["python", "-c", probe], stdout=True, stderr=True)
    output = ""
    async with run.start(detach=False) as stream:
        while (message := await stream.read_out()) is not None:
            output += message.data.decode()
    first = json.loads(output.splitlines()[0])
    assert first == {"env": "/model", "config": '{"uploaded": true}'}, output
    assert "WROTE" not in output and output.count("REFUSED") == 3, output
    assert not (folder / "new").exists()

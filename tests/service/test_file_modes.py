"""Review L4: on a shared host, uploads were world-readable (0755/0644 folders and files in
a 0755 store), replica logs 0644 and the state folder 0755. Now the state folder, the model
store and the process runtime's replica folders are 0700 and replica logs 0600; a model's
own folder stays 0755/0644 inside the 0700 store, so a Docker replica (uid 10001) still
reads its bind mount while no other local user gets in."""

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from launch import stack_state
from schemas.file_modes import private_dir
from schemas.settings import Settings
from tests.conftest import Proc, wait_task
from tests.support.accounts import call, make_user
from tests.support.archives import tiny_model_archive

NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)



def _readable_by_nobody(store: Path, inside: str) -> bool:
    """Whether uid `nobody`, handed the store folder itself (its parents, the test's private
    tmp folder, do not count), can read `inside` it."""
    fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY)
    try:
        done = subprocess.run(["cat", f"/proc/self/fd/{fd}/{inside}"], user=NOBODY,
                              pass_fds=(fd,), capture_output=True, check=False)
    finally:
        os.close(fd)
    return done.returncode == 0


async def test_an_uploaded_model_is_out_of_other_local_users_reach(
        api: str, pool: asyncpg.Pool, settings: Settings) -> None:
    _, alice = await make_user(pool, "alice")
    async with aiohttp.ClientSession() as http:
        status, model = await call(http, "POST", f"{api}/api/v2/models", headers=alice,
                                   json={"name": "private-one"})
        assert status == 201, model
        status, body = await call(http, "POST", f"{api}/api/v2/models/alice/private-one/upload",
                                  headers=alice, data=tiny_model_archive())
        assert status == 200, body
    store = settings.model_store_dir.resolve()
    assert _mode(store) == 0o700
    assert _mode(store / ".incoming") == 0o700
    # Each upload is a revision of its own: <store>/<model>/<number>/ (issue 26).
    revision = Path(body["source"]["location"])
    assert revision.parent == store / model["id"], revision
    config = revision / "config.json"
    assert config.is_file()
    # The model's own folder stays readable by a container's uid once it is inside the mount.
    assert _mode(config) & 0o004 and _mode(config.parent) & 0o005 == 0o005
    if os.geteuid() != 0:
        pytest.skip("reading as another user needs root to switch uid")
    assert _readable_by_nobody(config.parent, "config.json"), "the check itself cannot read"
    assert not _readable_by_nobody(store, f"{model['id']}/config.json"), \
        "another local user read the uploaded model"


async def test_process_replica_logs_and_folders_are_owner_only(
        api: str, spawn: Callable[..., Proc], admin_headers: dict[str, str],
        settings: Settings, hashing_model: Any) -> None:
    await hashing_model("logged")
    spawn("worker")
    async with aiohttp.ClientSession(headers=admin_headers) as http:
        async with http.post(f"{api}/deploy", json={"embedding_model_id": "alice/logged"}) as r:
            assert r.status == 202, await r.text()
            task = await r.json()
        done = await wait_task(http, api, "deploy", task["task_id"])
    assert done["status"] == "done", done
    root = settings.state_dir / "replicas"
    assert _mode(root) == 0o700
    folders = [p for p in root.iterdir() if p.is_dir()]
    assert folders
    for folder in folders:
        assert _mode(folder) == 0o700, folder
        for log in ("stdout.log", "stderr.log"):
            assert _mode(folder / log) == 0o600, (folder / log, oct(_mode(folder / log)))


def test_the_state_folder_is_owner_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    stack_state.secret_key(state)
    assert _mode(state) == 0o700
    assert _mode(state / stack_state.SECRET_FILE) == 0o600
    older = tmp_path / "older"  # a state folder an earlier version made 0755
    older.mkdir(mode=0o755)
    os.chmod(older, 0o755)
    assert _mode(private_dir(older)) == 0o700

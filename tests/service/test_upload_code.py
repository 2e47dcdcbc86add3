"""Review M8: an uploaded model may not carry code. With sentence-transformers < 6, a local
folder's modules.json naming `evil.Evil` beside an `evil.py` ran that file at load; now the
library is pinned to >= 6 and the upload itself refuses `.py` files and module types outside
`sentence_transformers.`, naming the file, and writes nothing to the store."""

import io
import json
import tarfile
import tomllib
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from schemas.settings import Settings
from tests.conftest import REPO, START_TIMEOUT_S, Proc
from tests.support.accounts import call, make_user
from tests.support.services import wait_for_http
from worker.runtimes.process import free_port

MODULES_OK = [{"idx": 0, "name": "0", "path": "",
               "type": "sentence_transformers.models.Transformer"},
              {"idx": 1, "name": "1", "path": "1_Pooling",
               "type": "sentence_transformers.models.Pooling"}]
EVIL_MODULES = [*MODULES_OK, {"idx": 2, "name": "steal", "path": "", "type": "evil.Evil"}]
EVIL_PY = b"import os\nos.system('id > /tmp/pwned')\nclass Evil:\n    pass\n"


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


BASE = {"config.json": b"{}", "model.safetensors": b"weights"}
CASES = {
    # The review's archive: modules.json naming evil.Evil, and evil.py beside it.
    "review": ({**BASE, "modules.json": json.dumps(EVIL_MODULES).encode(), "evil.py": EVIL_PY},
               "evil.py"),
    "py_in_subfolder": ({**BASE, "1_Pooling/helper.py": b"print(1)"}, "1_Pooling/helper.py"),
    "compiled": ({**BASE, "evil.cpython-311.pyc": b"\x00"}, "evil.cpython-311.pyc"),
    "foreign_module_type": ({**BASE, "modules.json": json.dumps(EVIL_MODULES).encode()},
                            "evil.Evil"),
    "modules_not_json": ({**BASE, "modules.json": b"{not json"}, "modules.json"),
}


@pytest.fixture
async def upload_api(spawn: Callable[..., Proc], anon_http: aiohttp.ClientSession,
                     clean: None) -> str:
    port = free_port("127.0.0.1")
    spawn("service", api_port=port)
    base = f"http://127.0.0.1:{port}"
    await wait_for_http(anon_http, base + "/healthz", timeout_s=START_TIMEOUT_S)
    return base


@pytest.mark.parametrize("case", sorted(CASES))
async def test_upload_carrying_code_is_refused_and_writes_nothing(
        case: str, upload_api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool,
        settings: Settings) -> None:
    _, alice = await make_user(pool, "alice")
    status, model = await call(anon_http, "POST", f"{upload_api}/api/v2/models", headers=alice,
                               json={"name": "evil"})
    assert status == 201, model
    files, named = CASES[case]
    status, body = await call(anon_http, "POST",
                              f"{upload_api}/api/v2/models/alice/evil/upload", headers=alice,
                              data=_tar(files))
    assert status in (400, 422) and body["status_code"] == status, body
    assert named in body["message"], body
    store = settings.model_store_dir
    left = [p for p in store.rglob("*") if p.is_file()] if store.exists() else []
    assert left == [], f"a refused upload wrote {left}"
    status, shown = await call(anon_http, "GET", f"{upload_api}/api/v2/models/alice/evil",
                               headers=alice)
    assert shown["train_status"] == "complete" and "location" not in shown["source"], shown


async def test_sentence_transformers_own_modules_are_accepted(
        upload_api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    _, alice = await make_user(pool, "alice")
    status, _ = await call(anon_http, "POST", f"{upload_api}/api/v2/models", headers=alice,
                           json={"name": "plain"})
    assert status == 201
    status, body = await call(anon_http, "POST",
                              f"{upload_api}/api/v2/models/alice/plain/upload", headers=alice,
                              data=_tar({**BASE, "modules.json": json.dumps(MODULES_OK).encode()}))
    assert status == 200, body


def test_sentence_transformers_is_pinned_to_6_or_later() -> None:
    """Before 6.0 the library imported a local modules.json's non-library classes without
    trust_remote_code; no version below 6 may satisfy the requirement."""
    project = tomllib.loads((Path(REPO) / "pyproject.toml").read_text())
    specs = [Requirement(r) for group in project["project"]["optional-dependencies"].values()
             for r in group if r.startswith("sentence-transformers")]
    assert specs, "sentence-transformers is no longer a dependency"
    for req in specs:
        assert not SpecifierSet(str(req.specifier)).contains("5.9.9"), req
        assert SpecifierSet(str(req.specifier)).contains("6.0.0"), req

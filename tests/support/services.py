"""Real Postgres and Redis for the tests: the machine's if reachable, else embedded ones
(launch/backing.py, shared with the benchmarks), and the tests' own helpers."""

import contextlib
import io
import json
import subprocess
import tarfile
import time
from pathlib import Path

from launch.backing import (
    DEFAULT_PG,
    create_database,
    drop_database,
    postgres_admin_dsn,
    reachable,
    redis_url,
    replica_processes,
    settings_env,
    wait_for_http,
    with_database,
)
from launch.embedded import start_redis

__all__ = ["DEFAULT_PG", "create_database", "drop_database", "postgres_admin_dsn",
           "private_redis", "reachable", "redis_url", "release_replica_cgroups",
           "replica_processes", "settings_env", "wait_for_http", "with_database"]


def private_redis(folder: Path, port: int | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """A Redis of the test's own, to stop and start without disturbing other tests."""
    return start_redis(folder, port)


def release_replica_cgroups(state_dir: Path, timeout_s: float = 5) -> None:
    """Remove the memory cgroups of replicas killed under `state_dir` (once they are empty)."""
    for meta_file in (state_dir / "replicas").glob("*/meta.json"):
        with contextlib.suppress(OSError, ValueError):
            cgroup = (json.loads(meta_file.read_text()).get("memory") or {}).get("cgroup")
            if cgroup:
                _rmdir_when_empty(Path(cgroup), timeout_s)


def _rmdir_when_empty(folder: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while folder.exists() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            folder.rmdir()
            return
        time.sleep(0.05)

def tiny_model_archive(weights: bytes = b"not weights") -> bytes:
    """A tar.gz the upload accepts: config.json and a (fake, unloadable) safetensors file
    holding `weights`."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in (("config.json", b"{}"), ("model.safetensors", weights)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()

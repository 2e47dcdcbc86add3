"""The `process` runtime: each replica a local `python -m model_server` on a port of the
replica host (loopback by default), its endpoint on the advertised address.

Replicas run in their own session so a worker crash does not take them down; each keeps
a folder under `<state_dir>/replicas/<id>/` (meta.json, stdout.log, stderr.log, exit_code)
so any worker on this host can list, inspect, stop and read logs of them after a restart.
"""

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import sys
from collections import deque
from pathlib import Path
from typing import Any, Protocol

import structlog

from schemas.file_modes import private_append, private_dir
from schemas.settings import Settings
from worker.runtimes import memory_limit
from worker.runtimes.base import (
    ReplicaInfo,
    ReplicaSpec,
    RuntimeFailure,
    StartedReplica,
    compute_threads,
    endpoint_url,
    model_server_env,
    parse_labels,
    stop_and_remove_each,
)
from worker.runtimes.environment import host_env
from worker.runtimes.fork_server import ChildLost, ForkServer

log = structlog.get_logger(__name__)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int, ref: str, folder: Path) -> bool:
    """True if `pid` runs and is still replica `ref` (guards against pid reuse): its
    environment names it (a forked replica's too: the zygote's child rewrites the block
    /proc shows), or its working directory is the replica's `folder` (a spawned replica's
    folder is set before its exec, whose environment reads empty for a moment after
    `create_subprocess_exec` returned: seen under load), or it is on its way out."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # its memory going as it exits
        environ = b""
    # A process on its way out lets go of its memory, its environment with it, before it is
    # a zombie: it still runs for whoever waits for its end (a replica whose zygote died has
    # no parent here to wait on).
    if not environ or f"GREENROOM_REPLICA_ID={ref}".encode() in environ:
        return True
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == folder
    except OSError:
        return False


# After SIGKILL, how long `stop` waits for the process to be gone: a replica whose zygote
# died (or one started by an earlier worker) has no parent here to wait on.
KILLED_WAIT_S = 2.0


class Child(Protocol):
    """A replica this runtime started: spawned (asyncio's process) or forked by the zygote."""

    pid: int

    async def wait(self) -> int: ...

    def kill(self) -> None: ...


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open(errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except FileNotFoundError:
        return ""


class ProcessRuntime:
    """Replicas as local subprocesses; the embedded default where no engine is reachable."""

    name = "process"

    def __init__(self, settings: Settings) -> None:
        self._root = (settings.state_dir / "replicas").resolve()
        self._host = settings.replica_host
        # Replicas listen on replica_host; their endpoints name the advertised address.
        self._advertised = settings.replica_endpoint_host
        self.local_host: str | None = self._advertised
        self._default_memory_mb = settings.replica_memory_mb
        self._cgroups = settings.replica_cgroups
        self._children: dict[str, Child] = {}
        self._reapers: set[asyncio.Task[None]] = set()
        # Replicas forked from a warm interpreter (worker/runtimes/fork_server.py).
        self._fork_server = (ForkServer(settings.state_dir.resolve() / "zygote")
                             if settings.replica_fork_server else None)

    def warm(self) -> None:
        """Start the fork server in the background (a worker's start does), so the first
        replica is forked too; without it, the first replica is spawned and starts it."""
        if self._fork_server is not None:
            self._fork_server.begin()

    def _dir(self, ref: str) -> Path:
        return self._root / ref

    async def start(self, spec: ReplicaSpec) -> StartedReplica:
        ref = str(spec.replica_id)
        private_dir(self._root)
        folder = private_dir(self._dir(ref))
        port = free_port(self._host)
        # Never the worker's environment: it holds the secret key and database URL.
        # Host values over the replica's env: the deployment's env never replaces them.
        env = {**model_server_env(spec, self._host, port), **host_env(home=folder),
               "GREENROOM_REPLICA_ID": ref}
        threads = compute_threads(spec.cpus, os.cpu_count() or 1)
        if threads is not None:
            env["MODEL_SERVER_NUM_THREADS"] = str(threads)
        limit = self._memory_limit(ref, spec)
        proc, how = await self._start_process(folder, env, limit)
        endpoint = endpoint_url(self._advertised, port)
        memory = None if limit is None else {
            "kind": limit.kind, "limit_mb": limit.limit_bytes // 2**20,
            "cgroup": str(limit.cgroup) if limit.cgroup else None}
        meta = {"pid": proc.pid, "endpoint": endpoint, "labels": spec.labels(), "memory": memory,
                "started": how}
        (folder / "meta.json").write_text(json.dumps(meta))
        self._children[ref] = proc
        reaper = asyncio.create_task(self._reap(ref, proc))
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)
        log.info("replica_started", runtime="process", replica=ref, pid=proc.pid,
                 endpoint=endpoint, memory=memory, started=how)
        return StartedReplica(runtime_ref=ref, endpoint=endpoint)

    def _memory_limit(self, ref: str, spec: ReplicaSpec) -> memory_limit.Limit:
        """The deployment's memory (or the default) as a cgroup; else RLIMIT_AS, which counts
        virtual memory, when the deployment asked for a limit itself, and RLIMIT_DATA (its
        heap and anonymous memory) at the default when it did not: never no limit."""
        limit = memory_limit.prepare(ref, spec.memory_mb or self._default_memory_mb,
                                     cgroups=self._cgroups)
        if limit.kind == "rlimit" and not (spec.memory_mb and spec.memory_requested):
            return memory_limit.Limit("rlimit-data", limit.limit_bytes)
        return limit

    async def _start_process(self, folder: Path, env: dict[str, str],
                             limit: memory_limit.Limit | None) -> tuple[Child, str]:
        """`python -m model_server` in its own session (and so process group), working
        directory `folder`, inside its memory limit: forked by the zygote where it can,
        else spawned. Returns it and which ("forked" or "spawned")."""
        proc: Child | None = None
        if self._fork_server is not None:
            proc = await self._fork_server.fork(folder, env, limit)
        how = "forked" if proc is not None else "spawned"
        if proc is None:
            proc = await self._spawn(folder, env, limit)
        if limit is not None:
            try:
                limit.apply(proc.pid)
            except OSError as exc:  # no limit is no start: kill it rather than run it unbounded
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(ChildLost):
                    await proc.wait()
                memory_limit.release(str(limit.cgroup) if limit.cgroup else None)
                raise RuntimeFailure(f"could not apply the memory limit: {exc}") from exc
        return proc, how

    async def _spawn(self, folder: Path, env: dict[str, str],
                     limit: memory_limit.Limit | None) -> asyncio.subprocess.Process:
        """A fresh interpreter running `python -m model_server`."""
        # Owner-only: a model's output can carry its secrets (review L4).
        with (os.fdopen(private_append(folder / "stdout.log"), "ab") as out,
              os.fdopen(private_append(folder / "stderr.log"), "ab") as err):
            try:
                return await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "model_server", stdout=out, stderr=err, env=env,
                    cwd=folder, start_new_session=True, stdin=asyncio.subprocess.DEVNULL,
                )
            except OSError as exc:
                if limit is not None:
                    memory_limit.release(str(limit.cgroup) if limit.cgroup else None)
                raise RuntimeFailure(f"could not start model server: {exc}") from exc

    def cap_logs(self, max_bytes: int) -> int:
        """Cut each replica's stdout.log and stderr.log past `max_bytes` to its newest half
        (from a line's start), in place: the replica appends (O_APPEND), so its next line
        lands after what is kept. A line written while a file is cut may come out of order.
        Returns the files cut."""
        cut = 0
        for path in self._root.glob("*/std*.log"):
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND)
            except OSError:
                continue
            try:
                size = os.fstat(fd).st_size
                if size <= max_bytes:
                    continue
                keep = max(1, max_bytes // 2)
                tail = os.pread(fd, keep, size - keep)
                start = tail.find(b"\n")
                tail = tail[start + 1:] if 0 <= start < len(tail) - 1 else tail
                os.ftruncate(fd, 0)
                os.write(fd, b"[greenroom: earlier output cut, the log passed %d bytes]\n"
                         % max_bytes + tail)
                cut += 1
            finally:
                os.close(fd)
        return cut

    async def _reap(self, ref: str, proc: Child) -> None:
        try:
            code = await proc.wait()
        except ChildLost:  # its zygote died: it runs on unwatched, as after a worker crash
            self._children.pop(ref, None)
            return
        with contextlib.suppress(OSError):
            (self._dir(ref) / "exit_code").write_text(str(code))
        self._children.pop(ref, None)

    def _meta(self, ref: str) -> dict[str, Any] | None:
        try:
            meta: dict[str, Any] = json.loads((self._dir(ref) / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        return meta

    def _info(self, ref: str, meta: dict[str, Any]) -> ReplicaInfo | None:
        parsed = parse_labels(meta.get("labels", {}))
        if parsed is None:
            return None
        replica_id, model_id, generation = parsed
        running = _pid_alive(int(meta["pid"]), ref, self._dir(ref))
        code_file = self._dir(ref) / "exit_code"
        exit_code = None
        if not running and code_file.exists():
            with contextlib.suppress(ValueError):
                exit_code = int(code_file.read_text())
        return ReplicaInfo(runtime_ref=ref, replica_id=replica_id, model_id=model_id,
                           generation=generation, running=running, exit_code=exit_code,
                           oom_killed=not running and self._over_memory(ref, meta),
                           endpoint=meta.get("endpoint"))

    def _over_memory(self, ref: str, meta: dict[str, Any]) -> bool:
        memory = meta.get("memory") or {}
        if not memory:
            return False
        rlimit = str(memory["kind"]).startswith("rlimit")
        stderr = _tail(self._dir(ref) / "stderr.log", 20) if rlimit else ""
        return memory_limit.oom_killed(memory["kind"], memory.get("cgroup"), stderr)

    async def inspect(self, runtime_ref: str) -> ReplicaInfo | None:
        meta = self._meta(runtime_ref)
        if meta is None:
            return None
        info = self._info(runtime_ref, meta)
        child = self._children.get(runtime_ref)
        if info is not None and not info.running and info.exit_code is None and child:
            # Our own child just died: its reaper may not have recorded the code yet.
            with contextlib.suppress(TimeoutError, ChildLost):
                async with asyncio.timeout(2):
                    code = await child.wait()
                return dataclasses.replace(info, exit_code=code)
        return info

    async def stop(self, runtime_ref: str, grace_s: float) -> None:
        meta = self._meta(runtime_ref)
        if meta is None:
            return
        pid = int(meta["pid"])
        self._signal(pid, runtime_ref, signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + grace_s
        killed_at: float | None = None
        while _pid_alive(pid, runtime_ref, self._dir(runtime_ref)):
            now = asyncio.get_running_loop().time()
            if killed_at is None and now > deadline:
                self._signal(pid, runtime_ref, signal.SIGKILL)
                killed_at = now
            elif killed_at is not None and now > killed_at + KILLED_WAIT_S:
                break  # stuck in the kernel: its end shows in `inspect` later
            await asyncio.sleep(0.05)
        child = self._children.get(runtime_ref)
        if child is not None:
            with contextlib.suppress(TimeoutError, ChildLost):
                async with asyncio.timeout(2):
                    await child.wait()

    def _signal(self, pid: int, ref: str, sig: signal.Signals) -> None:
        if not _pid_alive(pid, ref, self._dir(ref)):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    async def remove(self, runtime_ref: str) -> None:
        await self.stop(runtime_ref, grace_s=0)
        memory = (self._meta(runtime_ref) or {}).get("memory") or {}
        await memory_limit.release_when_empty(memory.get("cgroup"))
        shutil.rmtree(self._dir(runtime_ref), ignore_errors=True)

    async def logs(self, runtime_ref: str, tail: int = 100) -> tuple[str, str]:
        folder = self._dir(runtime_ref)
        if not folder.exists():
            raise RuntimeFailure(f"replica {runtime_ref} is gone")
        return _tail(folder / "stdout.log", tail), _tail(folder / "stderr.log", tail)

    async def remove_many(self, runtime_refs: list[str], grace_s: float) -> None:
        await stop_and_remove_each(self, runtime_refs, grace_s)

    async def list(self) -> list[ReplicaInfo]:
        if not self._root.exists():
            return []
        found = []
        for folder in sorted(self._root.iterdir()):
            meta = self._meta(folder.name)
            info = self._info(folder.name, meta) if meta else None
            if info is not None:
                found.append(info)
        return found

    async def close(self) -> None:
        for reaper in list(self._reapers):
            reaper.cancel()
        if self._fork_server is not None:
            await self._fork_server.close()

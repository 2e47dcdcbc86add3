"""The process runtime's fork server: replicas forked from a warm interpreter (issue 28).

A zygote (model_server/zygote.py) has imported what a replica imports, so a replica it
forks skips ~0.45 s of imports that a fresh `python -m model_server` pays with the GIL
held. One per runtime, started in the background (at the worker's start, or at its first
replica), with an environment built like a replica's host part (never the worker's: it
holds the secret key and database URL). Whenever the zygote is not ready, has failed or
died, or a replica's environment differs from the zygote's in a variable that libraries
read at import time, `fork` answers None and the runtime spawns the replica as before. A
replica asked for while the zygote is starting waits for it (at most START_WAIT_S): its
start is the same imports a spawn would make, begun earlier.

The zygote talks over one end of a socketpair (no name on disk) and exits at its end of
file, when the worker closes it or dies; the replicas it forked run on in their own
sessions, as spawned ones do.
"""

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from schemas.file_modes import private_append, private_dir
from worker.runtimes import memory_limit
from worker.runtimes.base import RuntimeFailure
from worker.runtimes.environment import OFFLINE, host_env

log = structlog.get_logger(__name__)

# model_server/zygote.py's ROOM_VARIABLE: bytes of environment a child may rewrite in place
# (/proc/<pid>/environ shows the replica's own). A replica with more is spawned instead.
ROOM_VARIABLE = "ZYGOTE_ENVIRON_ROOM"
ROOM_BYTES = 120_000  # under the kernel's 128 KiB for one variable
PIPE_BYTES = 256 * 1024  # a pipe's size for an environment past 64 KiB (at most ROOM_BYTES)
# The zygote must run one thread: numpy's OpenBLAS starts its pool at import otherwise.
PINNED = {"OPENBLAS_NUM_THREADS": "1"}
# Variables a library the zygote imports (Python itself, numpy and its BLAS, aiohttp and
# its C extensions, prometheus_client, tokenizers, SSL) reads when it loads: a replica is
# forked only where each equals the zygote's, so what those libraries read is its own.
IMPORT_TIME_NAMES = frozenset({"LANG", "TZ", "PATH", "VIRTUAL_ENV"})
IMPORT_TIME_PREFIXES = (
    "PYTHON", "LD_", "LC_", "OMP_", "OPENBLAS_", "GOTO_", "MKL_", "NUMPY_", "NPY_",
    "AIOHTTP_", "YARL_", "MULTIDICT_", "PROPCACHE_", "FROZENLIST_", "PROMETHEUS_",
    "PYDANTIC", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "SSL_", "OPENSSL_",
    "MALLOC_", "GLIBC_",
)
# A forked replica starts at the zygote's size (~145 MB virtual, ~75 MB of data): under an
# rlimit that leaves it less than this to grow in, it is spawned, and fails (or not) from
# the start as before, with the out-of-memory error the runtime reads.
RLIMIT_HEADROOM_BYTES = 128 * 2**20
START_TIMEOUT_S = 60.0
START_WAIT_S = 10.0  # how long a replica waits for a zygote still starting, then spawns
# The zygote answers within its own 10 s wait for the child (model_server/zygote.py).
FORK_TIMEOUT_S = 30.0
RETRY_AFTER_S = 30.0  # after a zygote failed or died, before starting another


def read_at_import(name: str) -> bool:
    return name in IMPORT_TIME_NAMES or name.startswith(IMPORT_TIME_PREFIXES)


def zygote_env(home: Path) -> dict[str, str]:
    """The zygote's environment: a replica's host part (its own HOME), the offline flags
    every replica has, the pinned thread count, and room for its children's."""
    return {**OFFLINE, **host_env(home=home), **PINNED, ROOM_VARIABLE: "x" * ROOM_BYTES}


def refusal(zygote: dict[str, str], replica: dict[str, str]) -> str | None:
    """Why a replica with environment `replica` must not be forked from a zygote started
    with `zygote`, or None. A pinned variable the replica lacks is fine (its default
    there is what the pin sets, for what the replica runs)."""
    for name in sorted(set(zygote) | set(replica)):
        if name == ROOM_VARIABLE or not read_at_import(name):
            continue
        if name in PINNED and name not in replica:
            continue
        if zygote.get(name) != replica.get(name):
            return f"{name} differs from the zygote's (read at import time)"
    size = sum(len(os.fsencode(k)) + len(os.fsencode(v)) + 2 for k, v in replica.items())
    if size > ROOM_BYTES:
        return f"its environment ({size} bytes) exceeds the zygote's room ({ROOM_BYTES})"
    return None


def environ_pipe(env: dict[str, str]) -> int:
    """The read end of a pipe holding `env` ("NAME=value\\0" each), its write end closed:
    what the zygote hands its child unread. The pipe is made big enough to hold it all."""
    block = b"".join(os.fsencode(k) + b"=" + os.fsencode(v) + b"\0" for k, v in env.items())
    read_fd, write_fd = os.pipe()
    try:
        os.set_blocking(write_fd, False)  # what does not fit fails (BlockingIOError)
        if len(block) > 65536:  # a pipe's default size
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        view = memoryview(block)
        while view:
            view = view[os.write(write_fd, view):]
    except OSError:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd


class ChildLost(RuntimeFailure):
    """The zygote died: the exit code of the replica it forked cannot be known here."""


@dataclass
class ForkedChild:
    """A replica the zygote forked: the zygote, its parent, reports its exit."""

    pid: int
    exited: "asyncio.Future[int]" = field(repr=False)

    async def wait(self) -> int:
        return await asyncio.shield(self.exited)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)


class ForkServer:
    """One zygote: started once in the background, asked to fork each replica."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self.env: dict[str, str] = {}
        self.state = "off"  # off, starting, ready, dead
        self.pid: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._next_id = 0
        self._retry_at = 0.0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sender: socket.socket | None = None
        self._settled: asyncio.Event | None = None  # set once the zygote is ready or gone

    def begin(self) -> None:
        """Start the zygote in the background unless one runs, starts, or failed lately."""
        loop = asyncio.get_running_loop()
        if self._closed or self.state in ("starting", "ready") or loop.time() < self._retry_at:
            return
        self._loop = loop
        self.env = zygote_env(self._folder)
        self.state = "starting"
        self._settled = asyncio.Event()
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._serve()
        except Exception as exc:  # replicas are spawned meanwhile
            log.warning("zygote_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._lost()

    async def _serve(self) -> None:
        private_dir(self._folder)
        ours, theirs = socket.socketpair()
        try:
            with os.fdopen(private_append(self._folder / "zygote.log"), "ab") as out:
                self._proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "model_server.zygote", "--fd", str(theirs.fileno()),
                    pass_fds=(theirs.fileno(),), env=self.env, cwd=self._folder,
                    stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out)
        finally:
            theirs.close()
        # Requests go out on a duplicate (asyncio's writer sends no file descriptors), as
        # non-blocking as the original: a request the socket cannot take now is spawned.
        self._sender = ours.dup()
        reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        async with asyncio.timeout(START_TIMEOUT_S):
            hello = json.loads(await reader.readline() or b"null")
        if not isinstance(hello, dict) or not hello.get("ready"):
            raise RuntimeFailure(f"the zygote did not start (see {self._folder}/zygote.log)")
        self.pid = self._proc.pid
        self.state = "ready"
        if self._settled is not None:
            self._settled.set()
        log.info("zygote_ready", pid=self.pid, room=hello.get("room"))
        while line := await reader.readline():
            message = json.loads(line)
            if "exited" in message:
                # Kept for `fork` if its reply has not been handed over yet.
                done = self._exits.setdefault(int(message["exited"]),
                                              asyncio.get_running_loop().create_future())
                if not done.done():
                    done.set_result(int(message["code"]))
            else:
                reply = self._replies.pop(int(message["id"]), None)
                if reply is not None and not reply.done():
                    reply.set_result(message)
        if self._closed:
            log.info("zygote_exited", pid=self.pid)
        else:
            log.warning("zygote_exited", pid=self.pid, folder=str(self._folder))

    def _lost(self) -> None:
        """The zygote is gone (or never came): spawn from now on, try again later."""
        if self.state != "off":
            self.state = "dead"
            self._retry_at = asyncio.get_running_loop().time() + RETRY_AFTER_S
        if self._settled is not None:
            self._settled.set()
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(RuntimeFailure("the zygote went"))
        for done in self._exits.values():
            if not done.done():
                done.set_exception(ChildLost("the zygote that forked it went"))
        self._replies.clear()
        self._exits.clear()
        if self._writer is not None:
            self._writer.close()
        if self._sender is not None:
            self._sender.close()
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    def _too_small(self, limit: memory_limit.Limit | None) -> str | None:
        """Why `limit` leaves a child of the zygote, at its size now, too little room."""
        if limit is None or limit.kind not in ("rlimit", "rlimit-data"):
            return None  # a cgroup counts the pages a replica touches, not the zygote's
        field = "VmData" if limit.kind == "rlimit-data" else "VmSize"
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return "the zygote's size is unknown"
        size = next((int(line.split()[1]) * 1024 for line in status.splitlines()
                     if line.startswith(field + ":")), None)
        if size is None or size + RLIMIT_HEADROOM_BYTES > limit.limit_bytes:
            return f"its {limit.kind} limit leaves too little above the zygote's {field}"
        return None

    async def fork(self, folder: Path, env: dict[str, str],
                   limit: memory_limit.Limit | None = None) -> ForkedChild | None:
        """The replica forked into `folder` with exactly `env`, to run under `limit`;
        None: spawn it instead."""
        self.begin()
        if self._loop is not asyncio.get_running_loop():
            return None  # a runtime used from another event loop spawns
        reason = refusal(self.env, env) if self.env else None
        if reason is not None:
            log.info("replica_not_forked", folder=str(folder), reason=reason)
            return None
        if self.state == "starting" and self._settled is not None:
            # The zygote's start is the imports a spawned replica would make now, begun
            # earlier: waiting for it costs no more than spawning, and no second import.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(START_WAIT_S):
                    await self._settled.wait()
        if self.state != "ready" or self._sender is None:
            return None
        reason = self._too_small(limit)
        if reason is not None:
            log.info("replica_not_forked", folder=str(folder), reason=reason)
            return None
        loop = asyncio.get_running_loop()
        self._next_id += 1
        request_id = self._next_id
        reply = self._replies[request_id] = loop.create_future()
        request = {"id": request_id, "folder": str(folder),
                   "stdout": str(folder / "stdout.log"), "stderr": str(folder / "stderr.log")}
        try:
            env_fd = environ_pipe(env)
            try:
                line = json.dumps(request).encode() + b"\n"
                sent = socket.send_fds(self._sender, [line], [env_fd])
            finally:
                os.close(env_fd)
            if sent != len(line):  # half a line: the zygote never forks for it, and the
                await self.close()  # stream is spoilt (it was not reading: stuck)
                raise OSError("the request went out in part")
            async with asyncio.timeout(FORK_TIMEOUT_S):
                answer = await reply
        except (OSError, RuntimeFailure) as exc:  # it went before answering: nothing forked
            self._replies.pop(request_id, None)
            log.warning("zygote_fork_failed", error=f"{type(exc).__name__}: {exc}")
            return None
        except TimeoutError as exc:
            # Stuck, and it may have forked: spawning beside that child could run two
            # replicas in one folder. This start fails (a retry spawns), the zygote ends.
            self._replies.pop(request_id, None)
            await self.close()
            raise RuntimeFailure("the zygote did not answer a fork in time") from exc
        if "pid" not in answer:
            log.warning("zygote_fork_refused", error=answer.get("error"))
            return None
        pid = int(answer["pid"])
        exited = self._exits.setdefault(pid, loop.create_future())
        exited.add_done_callback(lambda _: self._exits.pop(pid, None))
        return ForkedChild(pid, exited)

    async def close(self) -> None:
        """End the zygote (end of file on its socket); its replicas run on."""
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        if self._sender is not None:
            self._sender.close()
        if self._proc is not None and self._proc.returncode is None:
            try:
                async with asyncio.timeout(2):
                    await self._proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

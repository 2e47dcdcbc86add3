"""A fork server for the process runtime: replicas forked from a warm interpreter (issue 28).

`python -m model_server` spends most of an ONNX replica's start importing (aiohttp and its
SSL contexts, pydantic-settings, structlog, numpy, the app), with the GIL held, so the
model's load on the preload thread cannot hide it. A zygote pays those imports once: it
imports what a replica imports on the onnx path, but not onnxruntime (its import starts a
native thread, and a fork keeps only the forking thread; a replica imports it on its
preload thread in ~40 ms) and never torch or transformers, then forks one child per
replica. Each child becomes exactly what `python -m model_server` would have been:

- its own session (setsid), working directory its replica folder, stdin /dev/null,
  stdout.log and stderr.log appended to (owner-only, as the runtime opens them);
- its environment replaced by the request's, exactly: `os.environ`, the C library's
  environment, and the bytes /proc/<pid>/environ shows (the zygote starts with room for
  them: ROOM_VARIABLE, which the worker fills and the zygote drops), so whatever
  identifies a replica by its environment (the runtime's pid checks, `greenroom stop`)
  sees the replica's own and never the zygote's; its command line (/proc/<pid>/cmdline,
  ps) reads `python -m model_server`, as a spawned replica's;
- settings read from that environment, the model's load begun, the server run, and
  os._exit with the server's status (model_server/__main__.py's path).

Protocol, newline-delimited JSON on the socket the worker hands over as `--fd` (one end of
a socketpair: no name on disk, and end of file when the worker goes, which ends the
zygote; the replicas it forked run on, as replicas outlive a worker):
  the zygote, once its imports are done: {"ready": true, "room": <bytes of environment>}
  the worker: {"id": n, "folder": "/abs/folder", "stdout": path, "stderr": path}, with
              one file descriptor (SCM_RIGHTS): a pipe holding the replica's environment
              ("NAME=value\\0" each) and closed. Only the child reads it: the zygote's
              memory, which every later child inherits, never holds one replica's
              environment (its job token, its deployment's decrypted secrets) for the next.
  the zygote: {"id": n, "pid": p} once the child holds its environment, or
              {"id": n, "error": "..."} (the worker then spawns the replica instead)
  the zygote, when a child exits: {"exited": p, "code": c}, after writing
              <folder>/exit_code (negative: the signal that ended it, as asyncio reports).

The zygote runs one thread: OPENBLAS_NUM_THREADS=1 (set by the worker before numpy loads;
a forked replica's numpy BLAS is then single-threaded, which nothing on the embedding path
uses) and a count of /proc/self/task before each fork, refusing it when another thread
runs. Libraries that read their environment at import time read the zygote's: the worker
forks only replicas whose such variables equal the zygote's (worker/runtimes/fork_server.py)
and spawns the rest. The code a child runs is the code the zygote imported when it
started (a worker's life); a worker started after an upgrade starts a new zygote.
"""

import contextlib
import ctypes
import json
import os
import selectors
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

# As in __main__.py: structlog's optional rich import is never used by a replica.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

import numpy  # noqa: E402, F401  # imported for the children: ~0.1 s of each start
import tokenizers  # noqa: E402, F401

from model_server.preload import begin  # noqa: E402
from model_server.server import main  # noqa: E402

ROOM_VARIABLE = "ZYGOTE_ENVIRON_ROOM"  # worker/runtimes/fork_server.py fills it
READY_TIMEOUT_S = 10.0
EXIT_CRASHED = 1  # an exception out of the server's path: what an interpreter exits with
_MAIN = str(Path(__file__).resolve().parent / "__main__.py")
_LIBC = ctypes.CDLL(None)


def _stat_span(first: int) -> tuple[int, int]:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[first - 3]), int(fields[first - 2])


def environ_room() -> tuple[int, int]:
    """(start, end) of this process's environment block, the bytes /proc/<pid>/environ
    reads (fields 50 and 51 of /proc/self/stat)."""
    return _stat_span(50)


def rename_command_line(argv: list[str]) -> None:
    """/proc/<pid>/cmdline (what ps shows) reads `argv`, written over the zygote's own
    arguments, the rest zeroed; an `argv` longer than those is cut to fit."""
    start, end = _stat_span(48)
    block = b"".join(os.fsencode(arg) + b"\0" for arg in argv)[:end - start - 1]
    ctypes.memmove(start, block + b"\0" * (end - start - len(block)), end - start)


def replace_environ(env: dict[str, str]) -> None:
    """This process's environment becomes exactly `env`: for Python, for C code (getenv),
    and in the block /proc/<pid>/environ shows (the rest of it zeroed)."""
    block = b"".join(os.fsencode(k) + b"=" + os.fsencode(v) + b"\0" for k, v in env.items())
    start, end = environ_room()
    if len(block) > end - start:
        raise ValueError(f"the environment ({len(block)} bytes) exceeds the room "
                         f"({end - start} bytes)")
    os.environ.clear()
    _LIBC.clearenv()
    os.environ.update(env)
    ctypes.memmove(start, block + b"\0" * (end - start - len(block)), end - start)


def read_environ(fd: int) -> dict[str, str]:
    """The environment the worker wrote into the pipe `fd` ("NAME=value\0" each), to EOF."""
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    pairs = (item.partition(b"=") for item in b"".join(chunks).split(b"\0") if item)
    return {os.fsdecode(k): os.fsdecode(v) for k, _, v in pairs}


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _child(request: dict[str, Any], env_fd: int, ready_fd: int) -> None:
    """In the forked child: become the replica, then run the server; never returns."""
    code = EXIT_CRASHED
    try:
        env = read_environ(env_fd)
        os.setsid()
        # The handlers a fresh interpreter has (the zygote's own exit on either).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        fds = [os.open("/dev/null", os.O_RDONLY)]
        for key in ("stdout", "stderr"):
            fd = os.open(request[key], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.fchmod(fd, 0o600)
            fds.append(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        # Nothing of the zygote's stays open: its socket, its other children's pidfds.
        os.closerange(3, ready_fd)
        os.closerange(ready_fd + 1, os.sysconf("SC_OPEN_MAX"))
        os.chdir(request["folder"])
        replace_environ(env)
        # As a spawned replica: `python -m model_server` for ps, its __main__ for Python.
        rename_command_line([sys.executable, "-m", "model_server"])
        sys.argv = [_MAIN]
        os.write(ready_fd, b"1")
        os.close(ready_fd)
        preload = begin()
        code = main(preload)
    except SystemExit as exc:  # as an interpreter would end
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:  # reported in the replica's stderr.log
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # exiting regardless
                stream.flush()
        os._exit(code)


class Zygote:
    """The fork loop: requests from the worker's socket, children reaped through pidfds."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.selector = selectors.DefaultSelector()
        self.selector.register(sock, selectors.EVENT_READ, None)
        self.children: dict[int, tuple[int, str]] = {}  # pidfd -> (pid, folder)
        self.buffer = b""
        self.fds: list[int] = []  # received with the requests, one each, in order

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def serve(self) -> None:
        start, end = environ_room()
        self.send({"ready": True, "room": end - start, "pid": os.getpid()})
        while True:
            for key, _ in self.selector.select():
                if key.data is None:
                    if not self._read():
                        return
                else:
                    self._reap(key.fd)

    def _read(self) -> bool:
        data, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 16)
        if not data:
            return False  # the worker went
        self.buffer += data
        self.fds += fds
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            request = json.loads(line)
            env_fd = self.fds.pop(0) if self.fds else -1
            try:
                if env_fd < 0:
                    raise ValueError("the request came without its environment's pipe")
                reply = {"id": request["id"], "pid": self._fork(request, env_fd)}
            except Exception as exc:  # the worker spawns instead
                reply = {"id": request.get("id"), "error": f"{type(exc).__name__}: {exc}"}
            finally:
                if env_fd >= 0:
                    os.close(env_fd)
            self.send(reply)
        return True

    def _fork(self, request: dict[str, Any], env_fd: int) -> int:
        threads = _threads()
        if threads != 1:
            raise RuntimeError(f"the zygote runs {threads} threads; a fork keeps one")
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(request, env_fd, write_fd)
        os.close(write_fd)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # unwatched, it could not be reported: it must not run
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
            raise
        self.children[pidfd] = (pid, request["folder"])
        self.selector.register(pidfd, selectors.EVENT_READ, pid)
        # The pid is the replica's once the child holds its environment and folder (or
        # has died trying: its exit code is then recorded as any other's).
        ready = selectors.DefaultSelector()
        ready.register(read_fd, selectors.EVENT_READ)
        ready.select(READY_TIMEOUT_S)
        ready.close()
        os.close(read_fd)
        return pid

    def _reap(self, pidfd: int) -> None:
        pid, folder = self.children.pop(pidfd)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):  # the folder was removed with the replica
            Path(folder, "exit_code").write_text(str(code))
        self.send({"exited": pid, "code": code})


def run(fd: int) -> int:
    """Serve the worker on the socket `fd` until it closes it."""
    os.environ.pop(ROOM_VARIABLE, None)  # the bytes stay, as room for the children's
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    sock = socket.socket(fileno=fd)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the worker went
        Zygote(sock).serve()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--fd":
        sys.exit("usage: python -m model_server.zygote --fd <socket fd>")
    sys.exit(run(int(sys.argv[2])))

"""Test processes forked from a warm interpreter (issue 24: the suite's time).

Most tests start Greenroom processes (`python -m service`, `gateway.server`, `worker`):
each such start spent 0.7-1.1 s of CPU importing aiohttp, asyncpg, pydantic, structlog and
the project before it did anything, and the suite starts hundreds of them on two cores. A
fork server (one per pytest process, started at its first `start`) imports those modules
once; each test process is then a `fork` of it that runs the module as `python -m` would
(`runpy`, `__main__`, its own environment, working directory and log file), and exits
through `atexit` and `os._exit`.

What the child gets is what `subprocess.Popen([python, "-m", module], env=..., cwd=...,
stdout=log, stderr=STDOUT)` gave: exactly the given environment (nothing of the server's
own), stdin from /dev/null, default signal handlers, the same process group as the test.
`ForkedProcess` answers as much of `Popen` as the tests use (`pid`, `send_signal`, `kill`,
`poll`, `wait`, `returncode`); the exit status comes from the fork server, which reaps its
children, over the request's own connection.

Only the test suite uses it: the product's processes start as ever (`greenroom up`, its
supervisor, the gateway's peers), and tests/e2e/test_up*.py start those. Where the server
cannot start or answer, `start` falls back to `subprocess.Popen`: `GREENROOM_TEST_FORK=0`
turns it off.

    python -m tests.support.fork_server SOCKET   (by `start`, not by hand)
"""

import atexit
import contextlib
import json
import os
import runpy
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# What the processes the tests start import before they do anything (their mains import
# the rest at once); importing these starts no thread (numpy's OpenBLAS is kept to one),
# checked before every fork.
WARM_MODULES = ("service.server", "service.app", "gateway.server", "gateway.app",
                "worker.settings", "worker.jobs", "launch.backing", "launch.cli")
START_TIMEOUT_S = 60.0


# ---- the test's side ----------------------------------------------------------------

class ForkedProcess:
    """A process the fork server forked for this test: what tests use of `Popen`."""

    def __init__(self, conn: socket.socket, pid: int) -> None:
        self._conn = conn
        self.pid = pid
        self.returncode: int | None = None

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def poll(self) -> int | None:
        if self.returncode is None:
            self._read(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and not self._read(timeout):
            raise subprocess.TimeoutExpired(["-m", str(self.pid)], timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def _read(self, timeout: float | None) -> bool:
        """The exit status, once the server reaped the child; False while it runs."""
        deadline = None if timeout is None else time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._conn], [], [], left)[0]:
                return False
            chunk = self._conn.recv(256)
            if not chunk:
                break
            line += chunk
        # No line: the server itself is gone; the child is then no longer reaped by it, so
        # its end shows only in /proc.
        self.returncode = int(json.loads(line)["returncode"]) if line else _wait_gone(self.pid)
        self._conn.close()
        return True


def _wait_gone(pid: int) -> int:
    while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
        time.sleep(0.05)
    return -signal.SIGKILL


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


class _Server:
    """This pytest process's fork server (started at the first `start`)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.path: str | None = None
        self.failed = False
        self.lock = threading.Lock()
        atexit.register(self.close)  # once, whichever server runs at exit

    def address(self) -> str | None:
        with self.lock:
            if self.failed:
                return None
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            return self.path

    def _start(self) -> None:
        folder = Path(os.environ.get("TMPDIR", "/tmp"))
        self.path = str(folder / f"greenroom-fork-{os.getpid()}-{time.monotonic_ns()}.sock")
        # stdin a pipe: the server exits when this process goes (EOF), however it goes.
        # OpenBLAS (numpy's) would start its thread pool at import: one thread, no pool.
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.fork_server",
                                      self.path], cwd=REPO, stdin=subprocess.PIPE, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not os.path.exists(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.failed = True
                return
            time.sleep(0.02)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        if self.path:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


_SERVER = _Server()


def start(module: str, env: dict[str, str], log: Path, cwd: Path = REPO,
          args: Sequence[str] = (), stderr: Path | None = None,
          ) -> "ForkedProcess | subprocess.Popen[bytes]":
    """`python -m module *args` with exactly `env`, its stdout appended to `log` (and its
    stderr too, unless `stderr` names another file): forked from the warm server, or
    spawned where it cannot be."""
    address = _SERVER.address() if os.environ.get("GREENROOM_TEST_FORK", "1") != "0" else None
    if address is not None:
        request = {"module": module, "args": list(args), "env": env, "cwd": str(cwd),
                   "stdout": str(log), "stderr": str(stderr or log)}
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(address)
            conn.sendall(json.dumps(request).encode() + b"\n")
            reply = json.loads(conn.makefile("rb").readline())
            return ForkedProcess(conn, int(reply["pid"]))
        except (OSError, ValueError, KeyError):
            conn.close()
    with log.open("ab") as out, (stderr or log).open("ab") as err:
        return subprocess.Popen([sys.executable, "-m", module, *args], env=env, cwd=cwd,
                                stdout=out, stderr=err if stderr else subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def run(module: str, args: Sequence[str], env: dict[str, str], cwd: Path,
        timeout: float) -> subprocess.CompletedProcess[str]:
    """`subprocess.run([python, "-m", module, *args], capture_output=True, text=True)`,
    forked as `start` forks: a CLI command's exit code and its two outputs."""
    with tempfile.TemporaryDirectory(prefix="greenroom-run-") as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        proc = start(module, env, out, cwd, args, stderr=err)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        return subprocess.CompletedProcess([module, *args], code, out.read_text(),
                                           err.read_text())


# ---- the server's side --------------------------------------------------------------

def serve(path: str) -> None:
    """Import WARM_MODULES, then fork a child per request until stdin closes."""
    for name in WARM_MODULES:
        __import__(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".new")
    os.chmod(path + ".new", 0o600)
    listener.listen(64)
    os.rename(path + ".new", path)  # the test's side waits for the name: ready
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    children: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "child")
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "parent")
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "parent":
                    if not os.read(sys.stdin.fileno(), 4096):
                        return
                elif key.data == "child":
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                    _reap(children)
                else:
                    conn, _ = listener.accept()
                    _fork_one(conn, children, (listener, wake_r, wake_w, selector))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _fork_one(conn: socket.socket, children: dict[int, socket.socket],
              server_fds: tuple[Any, ...]) -> None:
    try:
        conn.settimeout(10)
        request = json.loads(conn.makefile("rb").readline())
        threads = len(os.listdir("/proc/self/task"))
        if threads != 1:  # a fork would copy a thread's locks but not the thread
            raise RuntimeError(f"the fork server runs {threads} threads")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
    except Exception:  # the request fails; the test's side falls back to a spawn
        traceback.print_exc()
        conn.close()
        return
    if pid == 0:
        _child(request, conn, children, server_fds)
    children[pid] = conn
    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                code = os.waitstatus_to_exitcode(status)
                conn.sendall(json.dumps({"returncode": code}).encode() + b"\n")
            conn.close()


def _child(request: dict[str, Any], conn: socket.socket,
           children: dict[int, socket.socket], server_fds: tuple[Any, ...]) -> None:
    """In the forked child: become `python -m module` and never return."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT
                          else signal.default_int_handler)
        listener, wake_r, wake_w, selector = server_fds
        selector.close()
        listener.close()
        for fd in (wake_r, wake_w):
            os.close(fd)
        conn.close()
        for other in children.values():
            other.close()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            out = os.open(request[name], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(out, fd)
            os.close(out)
        sys.argv = [request["module"], *request["args"]]
        # runpy's warning that a warm module (gateway.server, launch.cli) runs again as
        # __main__: it does, in a namespace of its own, as `python -m` runs it.
        warnings.filterwarnings("ignore", category=RuntimeWarning,
                                message=".*found in sys.modules after import of package")
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc.code)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    serve(sys.argv[1])

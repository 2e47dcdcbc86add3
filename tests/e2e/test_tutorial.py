"""Must-show 1: the README's tutorial, command by command, on a fresh folder, each output
checked; then `up` stopped and started again, and the earlier token and deployment work.

Run as the README says, with two substitutions a test needs: the API listens on a free
port instead of 8000 (the commands' `localhost:8000` is rewritten to it), and `make up`
runs what the Makefile's `up` target runs (`.venv/bin/greenroom up`), in the fresh folder
(whose `.venv` is a link to this checkout's).
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import services
from worker.runtimes.process import free_port

REPO = Path(__file__).resolve().parents[2]
PHASES = ["starting_replicas", "health_checking", "switching", "draining", "removing"]


def tutorial_commands() -> list[str]:
    """The commands of the README's tutorial block; a heredoc stays with its command."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- tutorial -->", 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0]
    commands: list[str] = []
    lines = iter(block.splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "<<'EOF'" in line:
            body = [line]
            for more in lines:
                body.append(more)
                if more == "EOF":
                    break
            line = "\n".join(body)
        commands.append(line)
    return commands


def test_make_up_runs_greenroom_up() -> None:
    """The substitution the tutorial test makes for `make up` (and `make up RUNTIME=docker`)
    is what the Makefile does."""
    target = (REPO / "Makefile").read_text().split("\nup:", 1)[1].split("\n\n", 1)[0]
    assert target.strip().splitlines()[-1].strip() == \
        "$(BIN)/greenroom up $(if $(RUNTIME),--runtime $(RUNTIME))"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    made = subprocess.run(["make", "--no-print-directory", "-n", "up", "RUNTIME=docker"],
                          cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert made.stdout.strip().splitlines()[-1] == ".venv/bin/greenroom up --runtime docker"


class Up:
    """`greenroom up` in the tutorial's folder, in the background as in its own terminal."""

    def __init__(self, folder: Path, env: dict[str, str], args: list[str]) -> None:
        self.folder, self.env, self.args = folder, env, args
        self.proc: subprocess.Popen[bytes] | None = None
        self.outputs: list[Path] = []

    def start(self) -> str:
        out = self.folder / f"up-{len(self.outputs)}.out"
        self.outputs.append(out)
        self.proc = subprocess.Popen([str(self.folder / ".venv/bin/greenroom"), "up", *self.args],
                                     cwd=self.folder, env=self.env, start_new_session=True,
                                     stdout=out.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            text = out.read_text()
            if "running; Ctrl-C stops everything" in text:
                return text
            assert self.proc.poll() is None, text
            time.sleep(0.5)
        raise TimeoutError(out.read_text())

    def stop(self) -> None:
        """Ctrl-C, as the user does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@contextlib.contextmanager
def fresh_clone(base: Path) -> Iterator[Path]:
    """A fresh folder as a new clone would be, with this checkout's `.venv` linked."""
    fresh = base / "clone"
    fresh.mkdir()
    (fresh / ".venv").symlink_to(REPO / ".venv")
    yield fresh
    for pid in services.replica_processes(fresh / ".greenroom"):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def folder(embedded_tmp: Path) -> Iterator[Path]:
    with fresh_clone(embedded_tmp) as fresh:
        yield fresh


def _checks() -> list[Callable[[subprocess.CompletedProcess[str]], None]]:
    """What each tutorial command must print, in the tutorial's order."""
    def ok(*needles: str) -> Callable[[subprocess.CompletedProcess[str]], None]:
        def check(done: subprocess.CompletedProcess[str]) -> None:
            assert done.returncode == 0, done.stdout + done.stderr
            for needle in needles:
                assert needle in done.stdout, (needle, done.stdout)
        return check

    def embedding(done: subprocess.CompletedProcess[str]) -> None:
        assert done.returncode == 0, done.stderr
        vector = json.loads(done.stdout)["data"][0]["embedding"]
        assert len(vector) == 384 and all(isinstance(x, float) for x in vector)

    rollout = [f"✓ {phase}" for phase in PHASES] + ["deploy done. served at"]
    return [
        ok(),                                            # export PATH
        ok("logged in as admin; token saved to .greenroom/token"),
        ok("registered admin/minilm"),
        ok(*rollout, "1/1 replicas ready", "/serve/minilm/embed"),
        embedding,
        ok("384"),                                       # the OpenAI SDK
        ok(*rollout, "2/2 replicas ready"),              # redeploy
        ok("admin/minilm: complete"),
        ok(),                                            # make up again (checked below)
        ok("admin/minilm: complete", "generation"),      # the earlier token still works
        embedding,                                       # the deployment still serves
        ok("delete done."),
    ]


@pytest.mark.timeout(900)
def test_the_readme_tutorial_works_and_survives_a_restart(folder: Path) -> None:
    _tutorial(folder, {}, [])


def _tutorial(folder: Path, settings: dict[str, str], up_args: list[str]) -> None:
    port, gateway_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    env |= {"GREENROOM_API_PORT": str(port), "GREENROOM_GATEWAY_PORT": str(gateway_port)}
    env |= settings
    commands, checks = tutorial_commands(), _checks()
    assert len(commands) == len(checks), commands
    up, prelude = Up(folder, env, up_args), []
    try:
        for command, check in zip(commands, checks, strict=True):
            command = (command.replace("localhost:8000", f"localhost:{port}")
                       .replace("localhost:8001", f"localhost:{gateway_port}"))
            if command == "make up":
                up.stop()
                restarted = up.start()
                assert "created the admin account" not in restarted
                assert "migrations applied: none needed" in restarted
                continue
            if not up.outputs:
                first = up.start()
                assert "created the admin account 'admin'" in first
                assert "greenroom deploy admin/minilm --wait" in first, "the printed example"
                runtime = up_args[-1] if up_args else "process"
                assert f"replicas run on the {runtime} runtime" in first
            if command.startswith("export "):
                prelude.append(command)
            done = subprocess.run(["bash", "-c", "\n".join([*prelude, command])], cwd=folder,
                                  env=env, capture_output=True, text=True, timeout=300,
                                  check=False)
            check(done)
        _state_is_private_and_the_password_never_printed(folder, up)
    finally:
        up.stop()


def _state_is_private_and_the_password_never_printed(folder: Path, up: Up) -> None:
    state = folder / ".greenroom"
    for name in ("secret_key", "stack.json", "admin-password", "token"):
        assert (state / name).stat().st_mode & 0o777 == 0o600, name
    password = (state / "admin-password").read_text().strip()
    assert len(password) >= 16
    printed = [p.read_text() for p in up.outputs]
    printed += [p.read_text(errors="replace") for p in (state / "logs").glob("*.log")]
    assert not any(password in text for text in printed)
    assert re.search(r"worker metrics at http://127\.0\.0\.1:\d+/metrics", printed[0])

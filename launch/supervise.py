"""`greenroom up` keeps its processes running: one that exits on its own is started again.

The API, the gateway (whose HAProxy controller exits when HAProxy or a gateway behind it
does) and the worker are each restarted when they exit while `up` runs, after a short
pause; one that keeps exiting (`MAX_RESTARTS` within `WINDOW_S`) ends `up`, which then
stops everything as on Ctrl-C. Compose and Swarm do the same for their services
(`restart:` in compose.yaml, `restart_policy` in compose.stack.yaml).
"""

import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from typing import Any

Spawn = Callable[[str], subprocess.Popen[Any]]
Say = Callable[[str], None]

MAX_RESTARTS = 5
WINDOW_S = 60.0
PAUSE_S = 0.5
CHECK_S = 0.5
LABELS = {"service": "api", "gateway.server": "gateway"}


class GaveUp(RuntimeError):
    """A process kept exiting."""


class Supervisor:
    """`children` (a list `up` also stops at the end) kept running; `spawn(module)` starts
    one again."""

    def __init__(self, children: list[subprocess.Popen[Any]], modules: list[str],
                 spawn: Spawn, say: Say) -> None:
        self.children, self.modules = children, modules
        self._spawn, self._say = spawn, say
        self._restarts: dict[str, deque[float]] = {m: deque() for m in modules}

    def check(self) -> None:
        """Start again each child that exited; GaveUp if one exits too often."""
        for index, (child, module) in enumerate(zip(self.children, self.modules, strict=True)):
            code = child.poll()
            if code is None:
                continue
            label = LABELS.get(module, module)
            recent = self._restarts[module]
            now = time.monotonic()
            while recent and recent[0] < now - WINDOW_S:
                recent.popleft()
            if len(recent) >= MAX_RESTARTS:
                raise GaveUp(f"{label} exited {len(recent) + 1} times within "
                             f"{WINDOW_S:g} s (last exit code {code}); see its log")
            recent.append(now)
            self._say(f"{label} exited (code {code}); starting it again")
            time.sleep(PAUSE_S)
            self.children[index] = self._spawn(module)

    def run_until_signal(self) -> None:
        """Check the children every CHECK_S until SIGINT or SIGTERM arrives."""
        signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        while signal.sigtimedwait(signals, CHECK_S) is None:
            self.check()

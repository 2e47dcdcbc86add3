"""The API, a gateway and one worker as processes of their own, for the benches that drive
a whole stack (bench/rollout.py, bench/embed_job.py, bench/traffic_split.py)."""

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODULES = ("service", "gateway.server", "worker")


@contextlib.contextmanager
def stack_processes(env: dict[str, str], tmp: Path, stop_s: float = 20.0) -> Iterator[None]:
    """Start the three with `env`, each logging to `tmp/<module>.log`; on exit terminate
    them, and kill any that has not stopped within `stop_s`."""
    procs = []
    for module in MODULES:
        with (tmp / f"{module}.log").open("ab") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", module], cwd=REPO, env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=stop_s)
            except subprocess.TimeoutExpired:
                proc.kill()

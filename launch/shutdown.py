"""How `greenroom up` stops (issue 19): nothing it started outlives it.

In order: the worker (first, or its reconciler would replace each replica as it is
stopped), then the API and any other child (their graceful stop finishes the requests in
flight: that is the replicas' drain), then every replica the worker's runtime holds
(`python -m worker.teardown`: SIGTERM, then SIGKILL after the stop grace), then the
embedded Redis and Postgres. The deployments stay in Postgres; the next `up` brings them
back. A second Ctrl-C (or SIGTERM) skips every grace period: children are killed and the
replicas killed at once, but still found and removed.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

SIGNALS = {signal.SIGINT, signal.SIGTERM}
WORKER_GRACE_S = 30.0
CHILD_GRACE_S = 20.0
TEARDOWN_TIMEOUT_S = 120.0
POLL_S = 0.1

Say = Callable[[str], None]


class Stop:
    """One stop of `up`; `urgent` once a second signal came (or a step overran)."""

    def __init__(self, say: Say) -> None:
        self.say = say
        self.urgent = False
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # taken by sigtimedwait below

    def _interrupted(self, timeout_s: float) -> bool:
        if self.urgent:
            time.sleep(timeout_s)
            return False
        if signal.sigtimedwait(SIGNALS, timeout_s) is None:
            return False
        self.urgent = True
        self.say("second interrupt: stopping at once (replicas are still killed)")
        return True

    def wait(self, procs: list[subprocess.Popen[Any]], timeout_s: float) -> None:
        """Until `procs` exit, `timeout_s` passes or an interrupt comes; then kill the rest."""
        deadline = time.monotonic() + timeout_s
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if self._interrupted(POLL_S):
                break
        for proc in procs:
            if proc.poll() is None:
                # Each child leads its own session: kill its whole group, so what it started
                # (a gateway's peer processes) goes with it.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)

    def terminate(self, procs: list[subprocess.Popen[Any]], timeout_s: float) -> None:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL if self.urgent else signal.SIGTERM)
        self.wait(procs, 5.0 if self.urgent else timeout_s)

    def teardown(self, env: dict[str, str]) -> dict[str, int]:
        """Stop and remove every replica; restarted with --now on a second interrupt."""
        result = self._run_teardown(env, now=self.urgent)
        if result is None:  # interrupted or overran: again, killing at once
            self.urgent = True
            result = self._run_teardown(env, now=True)
        return result or {}

    def _run_teardown(self, env: dict[str, str], now: bool) -> dict[str, int] | None:
        cmd = [sys.executable, "-m", "worker.teardown"] + (["--now"] if now else [])
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + TEARDOWN_TIMEOUT_S
        while proc.poll() is None:
            if time.monotonic() > deadline or (not now and self._interrupted(POLL_S)):
                proc.kill()
                proc.wait()
                return None
            if now:
                time.sleep(POLL_S)
        out = proc.stdout.read().decode() if proc.stdout else ""
        for line in reversed(out.splitlines()):
            with contextlib.suppress(ValueError):
                found: dict[str, int] = json.loads(line)
                if "stopped" in found:
                    return found
        self.say(f"replica teardown ended with code {proc.returncode}")
        return {} if proc.returncode == 0 else None


def _module(proc: subprocess.Popen[Any]) -> str:
    args = proc.args if isinstance(proc.args, list) else []
    return str(args[-1]) if args else ""


def _stop_embedded(keep: list[Any]) -> int:
    """Embedded Redis (a process) and Postgres (a pgserver handle); returns how many."""
    count = 0
    for item in keep:
        if isinstance(item, subprocess.Popen):
            if item.poll() is None:
                item.terminate()
                try:
                    item.wait(10)
                except subprocess.TimeoutExpired:
                    item.kill()
                    item.wait()
            count += 1
        elif hasattr(item, "cleanup"):
            item.cleanup()  # pgserver's "stop" mode: stops the server, keeps the data
            count += 1
    return count


def stop_everything(children: list[subprocess.Popen[Any]], env: dict[str, str],
                    keep: list[Any], say: Say) -> None:
    """Stop what `up` started, in order, and say how much was stopped."""
    stop = Stop(say)
    say("stopping: worker, then API, then every replica, then embedded servers")
    workers = [c for c in children if _module(c) == "worker"]
    stop.terminate(workers, WORKER_GRACE_S)
    others = [c for c in children if c not in workers]
    stop.terminate(others, CHILD_GRACE_S)
    result = stop.teardown(env)
    embedded = _stop_embedded(keep)
    replicas, deployments = result.get("stopped", 0), result.get("deployments", 0)
    say(f"stopped {replicas} replica(s) of {deployments} deployment(s), "
        f"{len(children)} process(es) and {embedded} embedded server(s)"
        + ("" if replicas == 0 else "; the deployments stay in Postgres and the next "
           "`greenroom up` brings them back"))

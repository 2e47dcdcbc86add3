"""`greenroom up`'s supervision: a child that exits is started again, one that keeps
exiting ends `up` (launch/supervise.py)."""

import subprocess
import sys
from typing import Any

import pytest

from launch import supervise
from launch.supervise import GaveUp, Supervisor


def _exiting(code: int) -> subprocess.Popen[Any]:
    return subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])


def test_an_exited_child_is_started_again_and_one_that_keeps_exiting_ends_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervise, "PAUSE_S", 0)
    said: list[str] = []
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    children = [sleeper, _exiting(3)]
    spawned: list[str] = []

    def spawn(module: str) -> subprocess.Popen[Any]:
        spawned.append(module)
        return _exiting(3)

    supervisor = Supervisor(children, ["service", "worker"], spawn, said.append)
    try:
        children[1].wait()
        supervisor.check()
        assert spawned == ["worker"] and said == ["worker exited (code 3); starting it again"]
        assert children[0] is sleeper, "a running child is left alone"
        with pytest.raises(GaveUp, match="worker exited 6 times within 60 s"):
            for _ in range(supervise.MAX_RESTARTS + 1):
                children[1].wait()
                supervisor.check()
        assert len(spawned) == supervise.MAX_RESTARTS
    finally:
        sleeper.kill()
        sleeper.wait()
        for child in children:
            child.wait()

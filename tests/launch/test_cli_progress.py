"""`--wait`'s line per change (launch/cli_progress.py `Watcher`), off a terminal: a fast
rollout passes phases between two polls, and each still gets its line."""

import io
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from rich.console import Console

from launch.cli_progress import Watcher
from schemas.tasks import Phase, TaskKind, TaskResponse, TaskStatus

TASK_ID = uuid4()


def _task(status: str, phase: Phase | None, **metadata: Any) -> TaskResponse:
    now = datetime.now(UTC)
    return TaskResponse(task_id=TASK_ID, kind=TaskKind("deploy"), status=TaskStatus(status),
                        phase=phase, created_at=now, updated_at=now,
                        embedding_model_id="alice/m", metadata=metadata, detail=None)


def test_phases_passed_between_two_polls_each_get_a_line_once() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    timings = {"starting_replicas": 0.05, "health_checking": 0.11, "switching": 0.01}
    with Watcher(console) as watcher:
        watcher.update(_task("pending", None))
        watcher.update(_task("processing", Phase.starting_replicas))
        # The next poll finds it draining: health checks and the switch went by unseen.
        watcher.update(_task("processing", Phase.draining, timings=timings))
        watcher.update(_task("done", None, timings=timings | {"draining": 0.2, "removing": 0.1}))
    lines = out.getvalue().splitlines()
    named = [line.split("phase ", 1)[1].split()[0] for line in lines if "phase " in line]
    assert named == ["starting_replicas", "health_checking", "switching", "draining",
                     "removing"], lines
    assert any(line.endswith("phase health_checking took 0.11s") for line in lines), lines

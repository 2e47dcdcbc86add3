"""Live progress of a task for `--wait`: phases with their timings, replicas ready/wanted."""

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from schemas.tasks import Phase, TaskResponse

DEPLOY_PHASES = [p.value for p in Phase]
DELETE_PHASES = [Phase.switching.value, Phase.draining.value, Phase.removing.value]


def _replicas(task: TaskResponse) -> str:
    meta: dict[str, Any] = task.metadata
    wanted = meta.get("replicas_wanted")
    if wanted is None:
        return ""
    ready = meta.get("replicas_ready", 0)
    if task.status == "done":
        ready = len(meta.get("replicas", [])) or ready
    return f"{ready}/{wanted} replicas ready"


def table(task: TaskResponse, phase_started: float | None = None) -> Table:
    """One row per phase: done ones with their seconds, the current one with its elapsed."""
    view = Table(title=f"{task.kind} {task.embedding_model_id}: {task.status}",
                 caption=_replicas(task) or None)
    view.add_column("phase")
    view.add_column("seconds", justify="right")
    timings: dict[str, float] = task.metadata.get("timings", {})
    phases = DEPLOY_PHASES if task.kind == "deploy" else DELETE_PHASES
    for phase in phases:
        if phase in timings:
            view.add_row(f"[green]✓[/] {phase}", f"{timings[phase]:.2f}")
        elif task.phase == phase:
            elapsed = f"{time.monotonic() - phase_started:.1f}…" if phase_started else "…"
            view.add_row(f"[yellow]>[/] {phase}", elapsed)
        elif phase != Phase.preparing:  # only an `auto` model's deploy prepares
            view.add_row(f"  [dim]{phase}[/]", "")
    return view


class Watcher:
    """Shows a task as it moves: a live table on a terminal, a line per change otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._live: Live | None = None
        self._last: tuple[Any, ...] | None = None
        self._phase_started: float | None = None
        self.started = time.monotonic()

    def __enter__(self) -> "Watcher":
        if self.console.is_terminal:
            self._live = Live(console=self.console, refresh_per_second=8)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, task: TaskResponse) -> None:
        key = (task.status, task.phase, _replicas(task))
        if key != self._last and (self._last is None or key[1] != self._last[1]):
            self._phase_started = time.monotonic()
        if self._live is not None:
            self._live.update(table(task, self._phase_started))
        elif key != self._last:
            elapsed = time.monotonic() - self.started
            parts = [f"{elapsed:6.1f}s", str(task.status)]
            parts += [f"phase {task.phase}"] if task.phase else []
            parts += [_replicas(task)] if _replicas(task) else []
            self.console.print("  ".join(parts), highlight=False)
        self._last = key

    def finish(self, task: TaskResponse) -> None:
        if self._live is None:
            self.console.print(table(task))

"""Live progress of a task for `--wait`: phases with their timings, replicas ready/wanted;
and of an embed job for `greenroom embed`: a bar of inputs with rate and time left."""

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from launch.cli_rollout import step_lines
from schemas.embed_jobs import EmbedJob
from schemas.tasks import Phase, TaskResponse

DEPLOY_PHASES = [p.value for p in Phase]
DELETE_PHASES = [Phase.switching.value, Phase.draining.value, Phase.removing.value]
TRAFFIC_PHASES = {Phase.canary.value, Phase.shadow.value}  # shown only when a task has one


def _phases(task: TaskResponse) -> list[str]:
    """The phases a task of its kind goes through, in order."""
    return DEPLOY_PHASES if task.kind == "deploy" else DELETE_PHASES


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
    caption = "\n".join([*step_lines(task.metadata), _replicas(task)]).strip()
    view = Table(title=f"{task.kind} {task.embedding_model_id}: {task.status}",
                 caption=caption or None)
    view.add_column("phase")
    view.add_column("seconds", justify="right")
    timings: dict[str, float] = task.metadata.get("timings", {})
    for phase in _phases(task):
        if phase in TRAFFIC_PHASES and phase not in timings and task.phase != phase:
            continue
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
        self._shown: set[str] = set()  # the phases a line has named
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
        steps = step_lines(task.metadata)
        key = (task.status, task.phase, _replicas(task), tuple(steps))
        if key != self._last and (self._last is None or key[1] != self._last[1]):
            self._phase_started = time.monotonic()
        if self._live is not None:
            self._live.update(table(task, self._phase_started))
        elif key != self._last:
            elapsed = time.monotonic() - self.started
            self._passed(task, elapsed)
            parts = [f"{elapsed:6.1f}s", str(task.status)]
            parts += [f"phase {task.phase}"] if task.phase else []
            parts += [_replicas(task)] if _replicas(task) else []
            if self._last is None or key[:3] != self._last[:3]:
                self.console.print("  ".join(parts), highlight=False)
            before = self._last[3] if self._last is not None else ()
            for i, line in enumerate(steps):
                if i >= len(before) or before[i] != line:
                    self.console.print(f"{elapsed:6.1f}s  {line}", highlight=False)
        self._last = key
        if task.phase:
            self._shown.add(task.phase)

    def _passed(self, task: TaskResponse, elapsed: float) -> None:
        """A line for each phase the task went through between two polls (a fast rollout
        passes several), with its seconds, so no phase goes unseen."""
        timings: dict[str, float] = task.metadata.get("timings", {})
        for phase in _phases(task):
            if phase in timings and phase not in self._shown and phase != task.phase:
                self.console.print(f"{elapsed:6.1f}s  phase {phase} took {timings[phase]:.2f}s",
                                   highlight=False)
                self._shown.add(phase)

    def finish(self, task: TaskResponse) -> None:
        if self._live is None:
            self.console.print(table(task))


class JobProgress:
    """An embed job's progress for `greenroom embed`: a bar of inputs finished (done and
    failed) with the job's rate and time left on a terminal, a line per change otherwise."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self._bar: Progress | None = None
        self._row: Any = None
        self._last: tuple[Any, ...] | None = None
        self.started = time.monotonic()
        if console.is_terminal:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
                                 TimeElapsedColumn(), console=console)

    def __enter__(self) -> "JobProgress":
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    @staticmethod
    def detail(job: EmbedJob) -> str:
        parts = [f"{job.counts.failed} failed"] if job.counts.failed else []
        parts += [f"{job.rate:,.0f}/s"] if job.rate else []
        parts += [f"ETA {job.eta_s:,.0f}s"] if job.eta_s is not None else []
        return "  ".join(parts)

    def update(self, job: EmbedJob) -> None:
        finished = job.counts.done + job.counts.failed
        if self._bar is not None:
            if self._row is None:
                self._row = self._bar.add_task(f"embed {job.model}", total=job.counts.total,
                                               detail="")
            self._bar.update(self._row, completed=finished,
                             description=f"embed {job.model} ({job.status.value})",
                             detail=self.detail(job))
            return
        key = (job.status, finished)
        if key != self._last:
            elapsed = time.monotonic() - self.started
            self.console.print(f"{elapsed:6.1f}s  {job.status.value}  {finished:,}/"
                               f"{job.counts.total:,}  {self.detail(job)}".rstrip(),
                               highlight=False)
        self._last = key

"""Memory limits for process replicas: a cgroup where this host lets us make one, else
RLIMIT_AS.

A cgroup (v2 `memory.max`, or v1 `memory.limit_in_bytes`) limits resident memory and the
kernel's OOM killer ends the replica when it goes over, which is what the Docker runtime
gives too. RLIMIT_AS is the fallback where no cgroup is writable: it limits *virtual*
memory, which torch maps a lot of, so a limit that fits the model's resident size may be
too small for it; an allocation over it fails with MemoryError instead of a kill. Where the
deployment set no memory itself, the default is applied as RLIMIT_DATA instead (private
writable memory: the heap and anonymous maps, not the libraries and reservations torch
maps), so no replica ever runs without a bound.
"""

import asyncio
import contextlib
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

log = structlog.get_logger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
Kind = Literal["cgroup-v2", "cgroup-v1", "rlimit", "rlimit-data"]
# What an interpreter prints when an allocation fails under RLIMIT_AS.
_OUT_OF_MEMORY_MARKS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc",
                        "Memory allocation still failed", "out of memory")


@dataclass(frozen=True, slots=True)
class Limit:
    """One replica's limit: how it is enforced and, for a cgroup, where."""

    kind: Kind
    limit_bytes: int
    cgroup: Path | None = None

    def apply(self, pid: int) -> None:
        """Put the just-started process `pid` under the limit (from the parent, not a
        preexec_fn: forking a threaded worker and running Python before exec can deadlock).
        The few pages it touched before this are its interpreter's start, not the model."""
        if self.cgroup is not None:
            (self.cgroup / "cgroup.procs").write_text(str(pid))
        else:
            which = resource.RLIMIT_DATA if self.kind == "rlimit-data" else resource.RLIMIT_AS
            resource.prlimit(pid, which, (self.limit_bytes, self.limit_bytes))


def _own_cgroup(controller: str, lines: list[str]) -> tuple[Kind, Path] | None:
    """This process's cgroup folder that holds `controller`, v2 preferred."""
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" and _v2_has(controller):
            return "cgroup-v2", CGROUP_ROOT / path.lstrip("/")
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return "cgroup-v1", CGROUP_ROOT / controller / path.lstrip("/")
    return None


def _v2_has(controller: str) -> bool:
    try:
        return controller in (CGROUP_ROOT / "cgroup.controllers").read_text().split()
    except OSError:
        return False


def _try_cgroup(kind: Kind, parent: Path, name: str, limit_bytes: int) -> Path | None:
    folder = parent / name
    try:
        if kind == "cgroup-v2":
            with contextlib.suppress(OSError):  # busy if the parent holds processes
                (parent / "cgroup.subtree_control").write_text("+memory")
        folder.mkdir(exist_ok=True)
        if kind == "cgroup-v2":
            (folder / "memory.max").write_text(str(limit_bytes))
            with contextlib.suppress(OSError):
                (folder / "memory.swap.max").write_text("0")
        else:
            (folder / "memory.limit_in_bytes").write_text(str(limit_bytes))
            with contextlib.suppress(OSError):  # no swap accounting on this kernel
                (folder / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
    except OSError as exc:
        log.info("cgroup_unavailable", folder=str(folder), error=str(exc))
        with contextlib.suppress(OSError):
            folder.rmdir()
        return None
    return folder


def _sweep(parent: Path, min_age_s: float = 60.0) -> None:
    """Remove replica cgroups left empty by processes killed without `release` (a crashed
    worker, a killed test). rmdir refuses a cgroup that still holds a process, and the age
    keeps clear of one just made for a replica about to join it."""
    now = time.time()
    for folder in parent.glob("greenroom-*"):
        with contextlib.suppress(OSError):
            if now - folder.stat().st_mtime > min_age_s:
                folder.rmdir()


def prepare(name: str, limit_mb: int, cgroups: bool = True) -> Limit:
    """A limit for the replica `name`: its own cgroup if possible (and wanted), else
    RLIMIT_AS."""
    limit_bytes = limit_mb * 2**20
    if not cgroups:
        return Limit("rlimit", limit_bytes)
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    found = _own_cgroup("memory", [line for line in lines if line.count(":") >= 2])
    if found is not None:
        kind, parent = found
        _sweep(parent)
        folder = _try_cgroup(kind, parent, f"greenroom-{name}", limit_bytes)
        if folder is not None:
            return Limit(kind, limit_bytes, folder)
    return Limit("rlimit", limit_bytes)


def oom_killed(kind: str, cgroup: str | None, stderr_tail: str) -> bool:
    """Did the replica die of its memory limit?"""
    if kind.startswith("rlimit"):
        return any(mark in stderr_tail for mark in _OUT_OF_MEMORY_MARKS)
    if cgroup is None:
        return False
    events = "memory.events" if kind == "cgroup-v2" else "memory.oom_control"
    try:
        text = (Path(cgroup) / events).read_text()
    except OSError:
        return False
    counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
    return int(counts.get("oom_kill", "0")) > 0


def release(cgroup: str | None) -> bool:
    """Remove the replica's cgroup; False while processes are still in it."""
    if cgroup is None:
        return True
    try:
        Path(cgroup).rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


async def release_when_empty(cgroup: str | None, timeout_s: float = 2.0) -> None:
    """Remove the cgroup, waiting (bounded) for a killed process to leave it."""
    for _ in range(max(1, int(timeout_s / 0.05))):
        if release(cgroup):
            return
        await asyncio.sleep(0.05)

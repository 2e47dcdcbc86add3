"""Runtimes start, stop and inspect model-server replicas; one module per runtime here."""

from schemas.settings import Settings
from worker.runtimes.base import Runtime, RuntimeFailure


def create_runtime(settings: Settings) -> Runtime:
    """The runtime the settings name."""
    if settings.runtime == "process":
        from worker.runtimes.process import ProcessRuntime

        return ProcessRuntime(settings)
    if settings.runtime == "docker":
        from worker.runtimes.docker import DockerRuntime

        return DockerRuntime(settings)
    if settings.runtime == "swarm":
        from worker.runtimes.swarm import SwarmRuntime

        return SwarmRuntime(settings)
    raise RuntimeFailure(f"runtime {settings.runtime!r} is not available in this build")


__all__ = ["Runtime", "RuntimeFailure", "create_runtime"]

"""`python -m worker.teardown`: stop and remove every replica this host's runtime holds.

`greenroom up` runs it on Ctrl-C, after its worker and API have stopped (so nothing
replaces a replica as it goes, and no gateway sends it a request). The desired state is
left in Postgres: rows of serving replicas stay `ready`, so the next worker's reconciler
finds them gone and starts replacements (the crashed-replica path), and the deployments
come back as they were. Rows of replicas that no longer served (a drain or a rollout that
was interrupted) are marked stopped.

A plain `greenroom worker` never runs this: a worker that stops leaves its replicas
serving, and any worker on the host adopts them.

Prints one JSON line: {"stopped": replicas that were running, "deployments": how many
deployments they served, "removed": every replica removed}.
"""

import argparse
import asyncio
import contextlib
import json
from typing import Any

import structlog

from db import replicas
from db.errors import DatabaseError
from db.pool import create_pool
from schemas.logs import configure_logging
from schemas.settings import Settings
from schemas.tasks import ReplicaState
from worker import installation
from worker.runtimes import create_runtime
from worker.runtimes.base import ReplicaInfo, RuntimeFailure

log = structlog.get_logger(__name__)


async def _forget_unserving(settings: Settings, found: list[ReplicaInfo]) -> None:
    """Rows of removed replicas that were not serving: stopped. `ready` rows stay."""
    if not settings.database_url or not found:
        return
    try:
        pool = await create_pool(settings.database_url, max_size=1)
    except (OSError, DatabaseError) as exc:
        log.warning("teardown_database_unreachable", error=str(exc))
        return
    try:
        rows = await replicas.get_many(pool, [i.replica_id for i in found])
        done = [r.id for r in rows if r.state in (ReplicaState.starting, ReplicaState.draining)]
        await replicas.set_state(pool, done, ReplicaState.stopped)
    finally:
        await pool.close()


async def _resolved(settings: Settings) -> Settings:
    """The settings with this installation's labels (the database's id), so a teardown
    lists only this installation's containers; unchanged where the database is away."""
    if settings.runtime == "process" or not settings.database_url:
        return settings
    try:
        pool = await create_pool(settings.database_url, max_size=1)
    except (OSError, DatabaseError) as exc:
        log.warning("teardown_database_unreachable", error=str(exc))
        return settings
    try:
        return await installation.resolve(settings, pool)
    except (DatabaseError, LookupError) as exc:
        log.warning("teardown_installation_unknown", error=str(exc))
        return settings
    finally:
        await pool.close()


async def teardown(settings: Settings, grace_s: float) -> dict[str, Any]:
    """Stop (SIGTERM, SIGKILL after `grace_s`) and remove every replica the runtime lists."""
    settings = await _resolved(settings)
    runtime = create_runtime(settings)
    try:
        try:
            found = await runtime.list()
        except RuntimeFailure as exc:  # an unknown installation: touch nothing
            log.warning("teardown_list_failed", error=str(exc))
            return {"stopped": 0, "deployments": 0, "removed": 0}
        try:
            await runtime.remove_many([info.runtime_ref for info in found], grace_s)
        except RuntimeFailure as exc:
            log.warning("teardown_remove_failed", error=str(exc))
    finally:
        await runtime.close()
    with contextlib.suppress(DatabaseError, OSError):
        await _forget_unserving(settings, found)
    running = [i for i in found if i.running]
    return {"stopped": len(running), "deployments": len({i.model_id for i in running}),
            "removed": len(found)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.teardown", description=__doc__)
    parser.add_argument("--now", action="store_true",
                        help="kill at once instead of giving each replica its stop grace")
    args = parser.parse_args()
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    grace = 0.0 if args.now else settings.stop_grace_s
    print(json.dumps(asyncio.run(teardown(settings, grace))), flush=True)


if __name__ == "__main__":
    main()

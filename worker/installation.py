"""Which installation this worker belongs to: its runtime's labels come from here.

Two installations sharing one Docker Engine (or Swarm) each list only their own replicas,
so neither's reconciler reaps the other's: the default cluster label is derived from the
database's installation id (migration 008), not a fixed name, and every replica also
carries the id itself, so one set to the same GREENROOM_CLUSTER by hand is still told apart.
"""

from db import installation
from db.pool import Executor
from schemas.settings import Settings


def default_cluster(installation_id: str) -> str:
    return f"gr-{installation_id.replace('-', '')[:12]}"


async def resolve(settings: Settings, db: Executor) -> Settings:
    """`settings` with this database's installation id, and its cluster unless one is set."""
    found = str(await installation.get_id(db))
    return settings.model_copy(update={
        "installation_id": found, "cluster": settings.cluster or default_cluster(found)})

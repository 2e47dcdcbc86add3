"""This database's installation id (migration 008), drawn once at migration."""

from uuid import UUID

from db.errors import translated
from db.pool import Executor


async def get_id(db: Executor) -> UUID:
    """The installation id; every worker on this database reads the same one."""
    async with translated():
        found: UUID | None = await db.fetchval("SELECT id FROM installation")
    if found is None:
        raise LookupError("the installation table is empty: run `greenroom migrate`")
    return found

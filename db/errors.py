"""The database package's one root exception, and the translations of driver errors."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg


class DatabaseError(Exception):
    """Root of every error raised by db/."""


class Unavailable(DatabaseError):
    """Postgres could not be reached."""


class UniqueViolation(DatabaseError):
    """A unique constraint refused a write; `constraint` names it."""

    def __init__(self, constraint: str | None) -> None:
        super().__init__(f"unique constraint {constraint} violated")
        self.constraint = constraint


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Turn asyncpg errors into db errors at the package boundary."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise UniqueViolation(exc.constraint_name) from exc
    except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
            asyncpg.ConnectionDoesNotExistError,
            asyncpg.exceptions.OperatorInterventionError) as exc:
        # Server gone, restarting (57P01 admin shutdown, 57P03 cannot connect now) or
        # the connection broke mid-query: all mean "try again shortly".
        raise Unavailable(str(exc) or type(exc).__name__) from exc

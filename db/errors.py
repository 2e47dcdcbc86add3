"""The database package's one root exception, and the translations of driver errors."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from schemas.errors import Unavailable


class DatabaseError(Exception):
    """Root of every error raised by db/."""


class DatabaseUnavailable(DatabaseError, Unavailable):
    """Postgres could not be reached: to a caller, the domain's `Unavailable` (a 503, try
    again shortly) with a message of its own, never the driver's words, which `str()`
    keeps for the logs."""

    def __init__(self, reason: str) -> None:
        Unavailable.__init__(self, "database unavailable, try again shortly")
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


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
        raise DatabaseUnavailable(str(exc) or type(exc).__name__) from exc

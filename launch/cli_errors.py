"""Errors a user of the local commands can cause, as one line instead of a traceback."""

import contextlib
import sys
from collections.abc import Iterator

from schemas.settings import Settings

_HINT = ("run it in the folder where `greenroom up` runs, or set GREENROOM_DATABASE_URL "
         "and GREENROOM_REDIS_URL")


@contextlib.contextmanager
def user_errors(command: str, settings: Settings) -> Iterator[None]:
    """Missing settings, an unreachable database or Redis: one line, exit 1."""
    import asyncpg

    try:
        yield
    except RuntimeError as exc:
        if "is not set" not in str(exc):
            raise
        sys.exit(f"greenroom {command}: {exc}; {_HINT}")
    except (OSError, asyncpg.CannotConnectNowError) as exc:
        where = "the database" if settings.database_url else "a server"
        sys.exit(f"greenroom {command}: cannot reach {where} ({exc}); is `greenroom up` "
                 "running?")

"""`greenroom api` (and `python -m service`): run the API process."""

import asyncio
import contextlib

from aiohttp import web

from schemas.logs import configure_logging
from schemas.settings import Settings
from service.app import create_app


def serve(settings: Settings) -> None:
    """The API on api_host:api_port until stopped."""
    # uvloop's event loop where installed (a base dependency): the control plane's hot
    # paths (task polling, accepts) are socket I/O to clients, Postgres and Redis.
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(create_app(settings), host=settings.api_host, port=settings.api_port,
                print=None, access_log=None)


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    serve(settings)


if __name__ == "__main__":
    main()

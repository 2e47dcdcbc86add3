"""`greenroom gateway` (and `python -m gateway.server`): run the data plane.

`GREENROOM_GATEWAY_ENGINE=haproxy` (`--engine haproxy`) runs HAProxy programmed by
Greenroom instead, with the Python gateways behind it (gateway/haproxy/).

With `processes` > 1 this process serves too and starts the others, each its own gateway
on the same port (SO_REUSEPORT: the kernel spreads connections over them), and stops
them when it stops. Each serves through its front (gateway/front.py): anonymous requests
for public deployments' TEI routes without aiohttp's server, the rest with aiohttp.
"""

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from gateway.children import die_with_parent
from schemas.logs import configure_logging
from schemas.settings import Settings

if TYPE_CHECKING:
    from db.deployments import Route


def _start_peers(settings: Settings, count: int) -> list[subprocess.Popen[bytes]]:
    # The peers serve what this process serves, wherever its settings came from (the
    # environment or the stack file of `up`'s folder).
    env = dict(os.environ, GREENROOM_GATEWAY_PROCESSES="1",
               GREENROOM_GATEWAY_HOST=settings.gateway_host,
               GREENROOM_GATEWAY_PORT=str(settings.gateway_port))
    secret = settings.secret_key.get_secret_value() if settings.secret_key else None
    for name, value in (("DATABASE_URL", settings.database_url),
                        ("REDIS_URL", settings.redis_url), ("SECRET_KEY", secret)):
        if value:
            env[f"GREENROOM_{name}"] = value
    return [subprocess.Popen([sys.executable, "-m", "gateway.server"], env=env,
                             preexec_fn=die_with_parent())
            for _ in range(count)]


def _stop(peers: list[subprocess.Popen[bytes]]) -> None:
    for peer in peers:
        with contextlib.suppress(ProcessLookupError):
            peer.terminate()
    for peer in peers:
        try:
            peer.wait(timeout=20)
        except subprocess.TimeoutExpired:
            peer.kill()


def _fast_loop() -> None:
    """uvloop's event loop where installed: the gateway is all socket I/O."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(settings: Settings, processes: int | None = None) -> None:
    """The data plane on `settings.gateway_engine`: the Python gateway, or HAProxy with
    Python gateways behind it (gateway/haproxy/controller.py)."""
    if settings.gateway_engine == "haproxy":
        from gateway.haproxy.controller import serve_haproxy

        if processes:
            settings = settings.model_copy(update={"gateway_processes": processes})
        serve_haproxy(settings)
        return
    from gateway import front
    from gateway.app import create_gateway_app, serve_anonymous
    from gateway.keys import GATEWAY

    _fast_loop()
    count = max(1, processes or settings.gateway_processes)
    peers = _start_peers(settings, count - 1) if count > 1 else []
    try:
        # handler_cancellation: a caller that disconnects cancels its handler, ending its
        # hold or closing its connection to the replica, which then drops its queued work
        # (issue 29). The front (gateway/front.py) serves anonymous requests for public
        # deployments' TEI routes itself, the same way, and hands aiohttp the rest.
        app = create_gateway_app(settings)

        def serve_one(route: "Route", path: str, op: str, headers: CIMultiDict[str],
                      body: bytes) -> Coroutine[Any, Any, web.Response]:
            return serve_anonymous(app, route, path, op, headers, body)

        asyncio.run(front.run(app, settings.gateway_host, settings.gateway_port,
                              settings.max_body_bytes, lambda: app[GATEWAY].lookup,
                              serve_one))
    finally:
        _stop(peers)


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    serve(settings)


if __name__ == "__main__":
    main()

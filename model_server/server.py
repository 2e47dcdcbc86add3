"""Run the app until SIGTERM/SIGINT (graceful) or a failed model load (exit 1)."""

import asyncio
import signal
import sys

import structlog
from aiohttp import web
from pydantic import ValidationError

from model_server.app import STATE, create_app
from model_server.config import Settings
from model_server.lifecycle import Loader, ModelState, load_backend
from model_server.logs import configure_logging
from model_server.preload import Preload

SHUTDOWN_TIMEOUT_S = 30.0
# After SIGTERM, how long kept-alive connections are still served (each answer closing its
# connection) before aiohttp's shutdown closes the rest: a request written on one just as
# the answer before it left, without `Connection: close`, is answered, not dropped.
DRAIN_S, DRAIN_POLL_S = 0.5, 0.02
EXIT_OK, EXIT_LOAD_FAILED, EXIT_BAD_CONFIG = 0, 1, 2

log = structlog.get_logger("model_server")


def main(preload: Preload | None = None) -> int:
    """Entry point of ``python -m model_server``; returns the exit status. `preload`: the
    model's load already begun with its settings (model_server/preload.py)."""
    if preload is not None:
        apply_process_settings(preload.settings)
        return asyncio.run(serve(preload.settings, preload.loader))
    try:
        settings = Settings()
    except ValidationError as exc:
        configure_logging("INFO")
        log.error("invalid_configuration", error=str(exc).replace("\n", " "))
        return EXIT_BAD_CONFIG
    configure_logging(settings.log_level)
    apply_process_settings(settings)
    return asyncio.run(serve(settings))


def apply_process_settings(settings: Settings) -> None:
    """What the settings ask of the interpreter itself: the GIL's switch interval."""
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)


async def serve(settings: Settings, loader: Loader = load_backend) -> int:
    """Listen, load the model in the background, and shut down gracefully."""
    app = create_app(settings, loader)
    # handler_cancellation: a caller that disconnects cancels its handler, which takes its
    # queued work out of the batcher's lane (issue 29) instead of computing it for nobody.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S,
                           handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as exc:
        log.error("listen_failed", host=settings.host, port=settings.port, error=str(exc))
        await runner.cleanup()
        return EXIT_LOAD_FAILED
    log.info(
        "server_started",
        host=settings.host,
        port=settings.port,
        backend=settings.backend,
        model=settings.model,
        model_id=settings.served_model_id,
        task_id=settings.task_id,
    )
    reason = await _until_stopped(app[STATE].failed)
    log.info("shutdown_started", reason=reason)
    await _drain(runner, app[STATE])
    await runner.cleanup()
    log.info("shutdown_complete", reason=reason)
    return EXIT_LOAD_FAILED if reason == "model_load_failed" else EXIT_OK


async def _drain(runner: web.AppRunner, state: ModelState) -> None:
    """Stop listening (a new connection is refused: the gateway sends its request to
    another replica), then serve the open connections for up to DRAIN_S, each answer
    saying `Connection: close`, until their clients have closed them all."""
    state.stopping = True
    for site in list(runner.sites):
        await site.stop()
    for _ in range(round(DRAIN_S / DRAIN_POLL_S)):
        if runner.server is None or not runner.server.connections:
            return
        await asyncio.sleep(DRAIN_POLL_S)


async def _until_stopped(failed: asyncio.Event) -> str:
    """Wait for a stop signal or a failed model load; say which."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stopped.set)
    waiters = [asyncio.create_task(stopped.wait()), asyncio.create_task(failed.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
    return "signal" if stopped.is_set() else "model_load_failed"


if __name__ == "__main__":
    sys.exit(main())

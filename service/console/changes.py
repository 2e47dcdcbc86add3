"""Live changes for the console: one LISTEN connection per API process, fanned out.

Migration 003 makes Postgres NOTIFY `greenroom_changes` on every task, deployment,
replica and event change, whoever made it, once the change commits. Each open stream
gets its own bounded queue; a stream too slow to keep up, or a lost connection, gets a
`resync` (the page then refetches what it shows).

Streams are bounded: at most `max_per_user` open at once per user and `max_streams` per
process (each holds a queue and re-checks its caller on every access change); past either,
`stream_slot` refuses with 429 before the stream starts.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import asyncpg
import structlog
from aiohttp import web
from pydantic import ValidationError

from edge.keys import SETTINGS
from schemas.console import CHANGES_CHANNEL, Change
from schemas.errors import TooManyRequests

log = structlog.get_logger(__name__)
QUEUE_SIZE = 256
RECONNECT_S = 1.0
RESYNC = "resync"
CLOSING = "closing"
# What a refused stream is told to wait before reconnecting.
STREAM_RETRY_S = 5


class ChangeFeed:
    """Fan-out of the NOTIFY channel to subscriber queues."""

    def __init__(self, dsn: str, max_per_user: int = 4, max_streams: int = 200) -> None:
        self._dsn = dsn
        self._max_per_user = max_per_user
        self._max_streams = max_streams
        self._streams: dict[int, int] = {}  # open streams per user id
        self._queues: set[asyncio.Queue[Change | str]] = set()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def stream_slot(self, user_id: int) -> Iterator[None]:
        """Hold one of the user's and the process's stream slots; 429 when none is free."""
        mine = self._streams.get(user_id, 0)
        if mine >= self._max_per_user:
            raise TooManyRequests(f"at most {self._max_per_user} change streams may be open "
                                  f"per user; close one first", {"limit": self._max_per_user},
                                  retry_after_s=STREAM_RETRY_S)
        if sum(self._streams.values()) >= self._max_streams:
            raise TooManyRequests("too many change streams are open on this API; try again "
                                  "later", {"limit": self._max_streams},
                                  retry_after_s=STREAM_RETRY_S)
        self._streams[user_id] = mine + 1
        try:
            yield
        finally:
            left = self._streams.get(user_id, 1) - 1
            if left > 0:
                self._streams[user_id] = left
            else:
                self._streams.pop(user_id, None)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator["asyncio.Queue[Change | str]"]:
        queue: asyncio.Queue[Change | str] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    def end_streams(self) -> None:
        """Ask every open stream to end (the API is stopping; pages reconnect elsewhere)."""
        for queue in list(self._queues):
            _clear(queue)
            queue.put_nowait(CLOSING)

    def _publish(self, item: Change | str) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                _clear(queue)
                queue.put_nowait(RESYNC)

    def _on_notify(self, conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            self._publish(Change.model_validate_json(payload))
        except ValidationError:
            log.warning("console_change_unreadable", payload=payload[:200])

    async def _run(self) -> None:
        while True:
            try:
                await self._listen_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("console_feed_disconnected", error=str(exc) or type(exc).__name__)
            self.connected.clear()
            await asyncio.sleep(RECONNECT_S)

    async def _listen_once(self) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=5)
        try:
            await conn.add_listener(CHANGES_CHANNEL, self._on_notify)
            self.connected.set()
            self._publish(RESYNC)  # anything may have changed while we were away
            while not conn.is_closed():
                await asyncio.sleep(RECONNECT_S)
                await conn.execute("SELECT 1")  # notices a dead server promptly
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)


def _clear(queue: "asyncio.Queue[Change | str]") -> None:
    while not queue.empty():
        queue.get_nowait()


FEED = web.AppKey("console_feed", ChangeFeed)


async def feed_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the process's change feed, connecting in the background."""
    settings = app[SETTINGS]
    feed = ChangeFeed(settings.require_database_url(), settings.changes_max_streams_per_user,
                      settings.changes_max_streams)
    feed.start()
    app[FEED] = feed
    yield
    await feed.close()


async def end_streams(app: web.Application) -> None:
    """on_shutdown: open streams would otherwise hold the API's stop for its whole timeout."""
    if FEED in app:
        app[FEED].end_streams()

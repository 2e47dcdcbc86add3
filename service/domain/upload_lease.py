"""An upload's hold on its model (review M5): a lease in the database, renewed while the
upload streams, unpacks and installs; and the sweep of scratch folders nobody holds.

An API killed mid-upload stops renewing: once the lease passes, the model reads as the
status it had before (db/models.py `TRAIN_STATUS`), may be uploaded or deployed again,
and its scratch folder under `<store>/.incoming` is removed by the next sweep (at API start,
and before each upload).
"""

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import UUID

import asyncpg
import structlog

from db import models
from db.errors import DatabaseUnavailable
from db.models import Model
from db.pool import transaction
from schemas.errors import Conflict, TooManyRequests
from schemas.settings import Settings

log = structlog.get_logger(__name__)
INCOMING = ".incoming"
# Retry-After of a 429 for too many uploads at once.
RETRY_AFTER_S = 10


async def claim(pool: asyncpg.Pool, settings: Settings, model: Model, upload_id: str) -> str:
    """Hold `model` for an upload; returns its train status before. 429 past the uploads in
    flight allowed per owner or in all (counted under one lock, so concurrent claims cannot
    both pass); 409 when another upload or a save holds the model."""
    async with transaction(pool) as conn:
        await models.lock_uploads(conn)
        mine, everyone = await models.uploads_in_flight(conn, model.owner_id)
        if mine >= settings.upload_max_in_flight_per_user:
            raise TooManyRequests(
                f"{mine} uploads of this owner's models are running, the most at once "
                f"(GREENROOM_UPLOAD_MAX_IN_FLIGHT_PER_USER); try again when one is done",
                retry_after_s=RETRY_AFTER_S)
        if everyone >= settings.upload_max_in_flight:
            raise TooManyRequests(
                f"{everyone} uploads are running, the most this installation takes at once "
                "(GREENROOM_UPLOAD_MAX_IN_FLIGHT); try again shortly",
                retry_after_s=RETRY_AFTER_S)
        # The status to go back to is the one this upload found, never a stale snapshot.
        before = await models.claim_upload(conn, model.id, upload_id, settings.upload_lease_s)
    if before is None:
        raise Conflict("this model is already being uploaded or trained "
                       "(train_status in_progress); try again when it is done")
    return before


class UploadLease:
    """Renews the lease every third of it; `check()` raises once the upload lost it."""

    def __init__(self, pool: asyncpg.Pool, model_id: UUID, upload_id: str,
                 lease_s: float) -> None:
        self.pool, self.model_id, self.upload_id, self.lease_s = pool, model_id, upload_id, lease_s
        self.lost = False

    async def renew(self) -> bool:
        held = await models.renew_upload(self.pool, self.model_id, self.upload_id, self.lease_s)
        self.lost = self.lost or not held
        return held

    async def _keep(self) -> None:
        while not self.lost:
            await asyncio.sleep(self.lease_s / 3)
            with contextlib.suppress(DatabaseUnavailable, OSError):
                await self.renew()

    async def check(self) -> None:
        """Renew now; Conflict if the lease passed and another upload took the model."""
        if not await self.renew():
            raise Conflict("this upload lost its hold on the model (its lease passed and "
                           "another upload began); upload again")


@contextlib.asynccontextmanager
async def renewed(lease: UploadLease) -> AsyncIterator[UploadLease]:
    keeper = asyncio.create_task(lease._keep())
    try:
        yield lease
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper


async def sweep_incoming(pool: asyncpg.Pool, store: Path, min_age_s: float) -> list[str]:
    """Remove the scratch folders under `<store>/.incoming` that no live upload holds and
    that are older than `min_age_s` (an upload names its folder in the database before it
    makes it; the age guards a clock between the two). Returns the names removed."""
    incoming = store / INCOMING
    if not incoming.is_dir():
        return []
    live = await models.live_upload_ids(pool)
    now = time.time()
    removed = []
    for entry in incoming.iterdir():
        if entry.name in live:
            continue
        with contextlib.suppress(FileNotFoundError):
            if now - entry.lstat().st_mtime < min_age_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                await asyncio.to_thread(shutil.rmtree, entry, True)
            else:
                entry.unlink()
            removed.append(entry.name)
    if removed:
        log.info("upload_scratch_swept", folders=len(removed))
    return removed

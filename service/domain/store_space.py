"""The model store's disk (review M14): an upload may not take the store's filesystem below
a floor of free space (`store_min_free_mb` and `store_min_free_percent`, both held), so a
flood of uploads cannot fill the disk that may also hold the embedded Postgres."""

import shutil
from pathlib import Path

from schemas.errors import Conflict
from schemas.settings import Settings


def floor_bytes(settings: Settings, total_bytes: int) -> int:
    return max(settings.store_min_free_mb * 2**20,
               int(total_bytes * settings.store_min_free_percent / 100))


def check_room(settings: Settings, store: Path, more_bytes: int = 0) -> None:
    """Conflict (409) if writing `more_bytes` more would leave the store's filesystem below
    its floor of free space."""
    usage = shutil.disk_usage(store)
    floor = floor_bytes(settings, usage.total)
    if usage.free - more_bytes < floor:
        raise Conflict(
            f"upload refused: the model store's disk would keep less than {floor // 2**20:,} "
            f"MB free ({usage.free // 2**20:,} MB free now, this upload needs "
            f"{-(-more_bytes // 2**20):,} MB more; GREENROOM_STORE_MIN_FREE_MB and "
            "GREENROOM_STORE_MIN_FREE_PERCENT); an administrator must free space first")

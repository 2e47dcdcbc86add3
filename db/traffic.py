"""A deployment's traffic split during a canary or shadow rollout (`deployments.traffic`):
which candidate generation takes what share of requests, or what share it mirrors."""

import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from db.errors import translated
from db.pool import Executor


@dataclass(frozen=True, slots=True)
class Split:
    """The candidate's share: `weight` percent of requests go to it (the serving generation
    takes the rest), and `shadow_percent` percent are also mirrored to it."""

    generation: int
    weight: int = 0
    shadow_percent: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.weight <= 100 or not 0 <= self.shadow_percent <= 100:
            raise ValueError(f"a split's weight and shadow share are percents: {self}")


@dataclass(frozen=True, slots=True)
class Candidate:
    """What a gateway needs to send a share of a deployment's requests to its candidate."""

    split: Split
    replicas: list[tuple[UUID, str]]
    revision: int | None = None  # the revision the candidate generation pinned


def split_of(value: Any) -> Split | None:
    """The column's JSON (as text, or decoded by the pool's codec) as a `Split`; None when
    absent or unreadable (a gateway must never stop reloading its routes over one row)."""
    if value is None:
        return None
    try:
        data = json.loads(value) if isinstance(value, str | bytes) else value
        return Split(int(data["generation"]), int(data.get("weight", 0)),
                     float(data.get("shadow_percent", 0.0)))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


async def set_split(db: Executor, model_id: UUID, split: Split) -> None:
    async with translated():
        await db.execute(
            "UPDATE deployments SET traffic = $2::jsonb, updated_at = now() WHERE model_id = $1",
            model_id, {"generation": split.generation, "weight": split.weight,
                       "shadow_percent": split.shadow_percent})


async def clear_split(db: Executor, model_id: UUID) -> None:
    """Back to the serving generation alone."""
    async with translated():
        await db.execute("UPDATE deployments SET traffic = NULL, updated_at = now() "
                         "WHERE model_id = $1 AND traffic IS NOT NULL", model_id)


async def get_split(db: Executor, model_id: UUID) -> Split | None:
    async with translated():
        return split_of(await db.fetchval(
            "SELECT traffic FROM deployments WHERE model_id = $1", model_id))

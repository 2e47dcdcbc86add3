"""Feedback events, read by seed 000's GET /feedbacks (the gateway records them:
gateway/feedback.py)."""

from uuid import UUID

import asyncpg

from db import feedback
from db.feedback import Feedback


async def latest(pool: asyncpg.Pool, model_id: UUID,
                 count: int) -> tuple[list[Feedback], list[Feedback]]:
    """The newest `count` upvotes and associations."""
    upvotes = await feedback.latest(pool, model_id, "upvote", count)
    associations = await feedback.latest(pool, model_id, "associate", count)
    return upvotes, associations

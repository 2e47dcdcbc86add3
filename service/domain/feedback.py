"""Feedback events: recorded through the gateway, read by seed 000's GET /feedbacks."""

from uuid import UUID

import asyncpg

from db import feedback
from db.feedback import Feedback
from schemas.bazaar import FeedbackRequest
from schemas.errors import Invalid


def _check(body: FeedbackRequest) -> None:
    if body.event == "associate" and not (body.source and body.target):
        raise Invalid("invalid request: an associate event needs source and target")
    if body.event != "associate" and not body.query:
        raise Invalid(f"invalid request: an {body.event} event needs a query")


async def record(pool: asyncpg.Pool, model_id: UUID, body: FeedbackRequest) -> Feedback:
    _check(body)
    return await feedback.add(pool, model_id, body.event, body.payload())


async def latest(pool: asyncpg.Pool, model_id: UUID,
                 count: int) -> tuple[list[Feedback], list[Feedback]]:
    """The newest `count` upvotes and associations."""
    upvotes = await feedback.latest(pool, model_id, "upvote", count)
    associations = await feedback.latest(pool, model_id, "associate", count)
    return upvotes, associations

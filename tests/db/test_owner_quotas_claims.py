"""Review finding 11: what an owner's other models claim is read from each model's newest
open task; an embed job (issue 30) claims nothing, so a newer one must not hide the
model's pending deploy from the quota (db/owner_quotas.py, both readings). Real Postgres."""

from uuid import uuid4

import asyncpg

from db import owner_quotas, tasks
from schemas.models import ModelSource
from service.domain.registration import register

OPEN = ["pending", "processing"]


async def test_a_newer_embed_job_does_not_hide_a_pending_deploy(pool: asyncpg.Pool,
                                                                 clean: None) -> None:
    source = ModelSource(backend="hashing", dimension=8)
    claimed = await register(pool, "alice", "claimed", source, "public")
    asking = await register(pool, "alice", "asking", source, "public")
    for kind, request in (("deploy", {"embedding_model_id": claimed.identifier,
                                      "config": {"replicas": 3}}),
                          ("embed", {"generation": 1})):
        await tasks.insert(pool, task_id=uuid4(), kind=kind, model_id=claimed.id,
                           request=request, request_hash=kind, idempotency_key=None,
                           created_by=None, metadata={})
    claims = await owner_quotas.claims(pool, claimed.owner_id, asking.id, OPEN)
    assert [(c.model_id, c.task_kind, c.task_config) for c in claims] == [
        (claimed.id, "deploy", {"replicas": 3})]
    quota = await owner_quotas.owner_quota(pool, claimed.owner_id, asking.id, OPEN)
    assert [(g.task_kind, g.task_config, g.models) for g in quota.claims] == [
        ("deploy", {"replicas": 3}, 1)]

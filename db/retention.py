"""Retention (review M14): finished tasks, deployment events and feedback rows pruned, so no
caller (an anonymous one posting feedback on a public model, a job token writing events) can
grow a table without bound. Each statement deletes at most `batch` rows: a large backlog
goes over several passes rather than in one long transaction."""

from db.errors import translated
from db.pool import Executor

TERMINAL = ["done", "failed", "canceled", "refused"]


async def prune_tasks(db: Executor, older_than_s: float, batch: int = 10_000) -> int:
    """Delete finished tasks older than `older_than_s`, but never a model's newest task of
    a kind (what seed 000's and 001's status reads)."""
    async with translated():
        result: str = await db.execute(
            """DELETE FROM tasks WHERE id IN (
                   SELECT t.id FROM tasks t
                   WHERE t.status = ANY($3::text[])
                     -- an embed job's task goes with its files (db/embed_jobs.py)
                     AND t.kind <> 'embed'
                     AND t.finished_at < now() - make_interval(secs => $1)
                     AND EXISTS (SELECT 1 FROM tasks n WHERE n.model_id = t.model_id
                                   AND n.kind = t.kind AND n.created_at > t.created_at)
                   LIMIT $2)""",
            older_than_s, batch, TERMINAL)
    return int(result.split()[-1])


async def prune_events(db: Executor, older_than_s: float, per_model: int,
                       batch: int = 10_000) -> int:
    """Delete deployment events older than `older_than_s`, and each model's beyond its
    newest `per_model`."""
    async with translated():
        old: str = await db.execute(
            """DELETE FROM deployment_events WHERE id IN (
                   SELECT id FROM deployment_events
                   WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)""",
            older_than_s, batch)
        over = await _prune_per_model(db, "deployment_events", per_model, batch)
    return int(old.split()[-1]) + over


async def prune_feedback(db: Executor, per_model: int, batch: int = 10_000) -> int:
    """Delete each model's feedback beyond its newest `per_model` rows."""
    async with translated():
        return await _prune_per_model(db, "feedback", per_model, batch)


async def _prune_per_model(db: Executor, table: str, per_model: int, batch: int) -> int:
    assert table in ("deployment_events", "feedback")  # a constant, never a caller's text
    result: str = await db.execute(
        f"""WITH crowded AS (
                SELECT model_id FROM {table} GROUP BY model_id HAVING count(*) > $1),
            ranked AS (
                SELECT x.id, row_number() OVER (PARTITION BY x.model_id ORDER BY x.id DESC) AS n
                FROM {table} x JOIN crowded c ON c.model_id = x.model_id)
            DELETE FROM {table} WHERE id IN (SELECT id FROM ranked WHERE n > $1 LIMIT $2)""",
        per_model, batch)
    return int(result.split()[-1])

"""Applying every migration gives the schema the repositories expect (db/migrations)."""

import dataclasses

import asyncpg

from db.deployments import Deployment
from db.events import Event
from db.migrate import apply_migrations, migration_files
from db.replicas import Replica
from db.tasks import Task

EXPECTED = {"tasks": Task, "deployments": Deployment, "replicas": Replica,
            "deployment_events": Event}


async def test_migrated_schema_has_every_column_the_code_reads(
        pool: asyncpg.Pool, database_url: str) -> None:
    for table, row_type in EXPECTED.items():
        columns = {r["column_name"] for r in await pool.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table)}
        wanted = {f.name for f in dataclasses.fields(row_type)}
        assert wanted <= columns, f"{table} lacks {wanted - columns}"
    assert await apply_migrations(database_url) == []  # applying again changes nothing
    names = {r["name"] for r in await pool.fetch("SELECT name FROM schema_migrations")}
    assert names == {p.name for p in migration_files()}


async def test_one_processing_task_per_model_is_enforced_by_an_index(pool: asyncpg.Pool) -> None:
    index = await pool.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'tasks_one_processing_per_model'")
    assert "UNIQUE" in index and "processing" in index

"""Issue 26's API: a model's revisions (r1 at registration, one per change of source, none for
the same source), who may read and change them, the bound on how many one model may have,
and a rollback refused with a 4xx when there is nothing to roll back to."""

from uuid import UUID

import aiohttp
import asyncpg

from db import deployments, generations, revisions
from db.revisions import MAX_REVISIONS
from tests.support.accounts import call, make_user
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)

MODEL = "/api/v2/models/alice/rev-api"


async def test_revisions_are_made_by_a_change_of_source_and_read_with_read_access(
        api: str, pool: asyncpg.Pool) -> None:
    _, alice = await make_user(pool, "alice")
    _, bob = await make_user(pool, "bob")
    async with aiohttp.ClientSession() as http:
        status, body = await call(http, "POST", f"{api}/api/v2/models", headers=alice,
                                  json={"name": "rev-api", "access_level": "protected",
                                        "source": {"backend": "hashing", "dimension": 8}})
        assert status == 201, body
        status, listed = await call(http, "GET", f"{api}{MODEL}/revisions", headers=alice)
        assert status == 200 and [(r["id"], r["origin"]) for r in listed] == [("r1", "source")]

        same = {"source": {"backend": "hashing", "dimension": 8}}
        status, body = await call(http, "PATCH", f"{api}{MODEL}", headers=alice, json=same)
        assert status == 200, body
        new = {"source": {"backend": "hashing", "dimension": 16}}
        status, body = await call(http, "PATCH", f"{api}{MODEL}", headers=alice, json=new)
        assert status == 200 and body["source"]["dimension"] == 16, body
        status, listed = await call(http, "GET", f"{api}{MODEL}/revisions", headers=bob)
        assert status == 200, listed  # protected: any signed-in user reads it
        assert [r["id"] for r in listed] == ["r2", "r1"]
        assert listed[0]["digest"].startswith("sha256:") and listed[0]["size_bytes"] == 0

        status, body = await call(http, "PATCH", f"{api}{MODEL}", headers=bob, json=new)
        assert status == 403, body
        status, body = await call(http, "PATCH", f"{api}{MODEL}", headers=alice,
                                  json={"source": {"backend": "hashing", "nope": 1}})
        assert status == 422, body

        # Nothing serves: a rollback has nothing to go back from; bad bodies are 422s.
        rollback = f"{api}/api/v2/deploy/alice/rev-api/rollback"
        status, body = await call(http, "POST", rollback, headers=alice)
        assert status == 409 and "no serving generation" in body["message"], body
        for bad in ({"generation": 0}, {"generation": 2**40}, {"to": 1}):
            status, body = await call(http, "POST", rollback, headers=alice, json=bad)
            assert status == 422, (bad, body)
        status, body = await call(http, "POST", rollback, headers=bob)
        assert status == 403, body


async def test_a_model_has_at_most_max_revisions(api: str, pool: asyncpg.Pool) -> None:
    _, alice = await make_user(pool, "alice")
    async with aiohttp.ClientSession() as http:
        status, model = await call(http, "POST", f"{api}/api/v2/models", headers=alice,
                                   json={"name": "rev-api", "source": {"backend": "hashing"}})
        assert status == 201, model
        await pool.execute(
            """INSERT INTO model_revisions (model_id, number, origin, source, digest)
               SELECT $1::uuid, n, 'source', '{}'::jsonb, 'sha256:x'
               FROM generate_series(2, $2::int) AS n""", model["id"], MAX_REVISIONS)
        status, body = await call(http, "PATCH", f"{api}{MODEL}", headers=alice,
                                  json={"source": {"backend": "hashing", "dimension": 4}})
        assert status == 409 and "revisions" in body["message"], body


async def test_a_rollback_is_idempotent_by_key_and_its_target_is_part_of_the_request(
        api: str, pool: asyncpg.Pool) -> None:
    _, alice = await make_user(pool, "alice")
    async with aiohttp.ClientSession() as http:
        status, model = await call(http, "POST", f"{api}/api/v2/models", headers=alice,
                                   json={"name": "rev-api", "source": {"backend": "hashing"}})
        assert status == 201, model
        model_id = UUID(model["id"])
        # Generation 1 served, generation 2 serves (as finished rollouts leave them).
        revision = await revisions.latest(pool, model_id)
        assert revision is not None
        for _ in range(2):
            _, generation = await deployments.begin_generation(pool, model_id, "rev-api")
            await generations.pin(pool, model_id, generation, revision.number, {})
            await deployments.switch(pool, model_id, generation, "rev-api", {})
        url = f"{api}/api/v2/deploy/alice/rev-api/rollback"
        keyed = alice | {"Idempotency-Key": "roll-1"}
        status, first = await call(http, "POST", url, headers=keyed)
        assert status == 202 and first["kind"] == "rollback", first
        status, again = await call(http, "POST", url, headers=keyed)
        assert status == 200 and again["task_id"] == first["task_id"], again
        status, other = await call(http, "POST", url, headers=keyed, json={"generation": 1})
        assert status == 422 and "idempotency key" in other["message"], other
        status, missing = await call(http, "POST", url, headers=alice, json={"generation": 7})
        assert status == 404, missing
        status, serving = await call(http, "POST", url, headers=alice, json={"generation": 2})
        assert status == 409 and "already serving" in serving["message"], serving
        status, read = await call(http, "GET", f"{api}/rollback/{first['task_id']}",
                                  headers=alice)
        assert status == 200 and read["task_id"] == first["task_id"], read

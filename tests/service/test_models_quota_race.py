"""Review L3: concurrent registers never take an owner past the models quota.

80 registers at once (asyncio.gather over aiohttp) against a real API process and Postgres;
before, each counted the owner's models and inserted after, so many passed the same count.
"""

import asyncio

import aiohttp
import asyncpg

from tests.support.accounts import call, make_user

QUOTA = 10
ATTEMPTS = 80


async def test_eighty_concurrent_registers_never_pass_the_models_quota(
        api: str, http: aiohttp.ClientSession, pool: asyncpg.Pool,
        admin_headers: dict[str, str]) -> None:
    user, bob = await make_user(pool, "bob")
    status, body = await call(http, "PUT", f"{api}/api/v2/users/bob/quotas",
                              headers=admin_headers, json={"models": QUOTA})
    assert status == 200, body
    connector = aiohttp.TCPConnector(limit=ATTEMPTS)
    async with aiohttp.ClientSession(connector=connector, headers=bob) as burst:
        answers = await asyncio.gather(*(
            call(burst, "POST", f"{api}/api/v2/models",
                 json={"name": f"q{i}", "source": {"backend": "hashing"}})
            for i in range(ATTEMPTS)))
    statuses = sorted(status for status, _ in answers)
    held = await pool.fetchval("SELECT count(*) FROM models WHERE owner_id = $1", user.id)
    print(f"{ATTEMPTS} concurrent registers, quota {QUOTA}: {statuses.count(201)} created, "
          f"{statuses.count(403)} refused, {held} held")
    assert held == QUOTA
    assert statuses == [201] * QUOTA + [403] * (ATTEMPTS - QUOTA)
    refusal = next(body for status, body in answers if status == 403)
    assert refusal["detail"] == {"quota": "models", "current": QUOTA, "requested": 1,
                                 "limit": QUOTA}, refusal

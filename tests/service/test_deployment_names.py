"""Review M10: deployment names. A name shaped like a model id is refused (it could take
that model's `/serve/{id}` traffic; on HAProxy the last route written won, so the review's
decoy answered for another tenant's model); a model id names its own model over any
deployment named after it (rows made before the refusal); a name freed by a rename stays
held for its previous model; and the placeholder row of a model's secrets can no longer be
squatted into a 500. Real API, gateway (HAProxy engine) and model servers."""

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest

from db import deployments
from db.pool import transaction
from gateway.haproxy.controller import find_haproxy
from schemas.models import ModelSource
from schemas.settings import Settings
from service.domain.registration import register
from tests.conftest import Proc, start_gateway
from tests.gateway.test_gateway_answers import serve_from
from tests.model_server.conftest import poll_health, start_server
from tests.support.accounts import make_user
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)

SOURCE = ModelSource(backend="hashing", dimension=16)


async def _models(pool: asyncpg.Pool) -> tuple[UUID, UUID, dict[str, str], dict[str, str]]:
    """Alice's public model `pub`, Bob's public `decoy`, and their token headers."""
    _, alice = await make_user(pool, "alice")
    _, bob = await make_user(pool, "bob")
    pub = await register(pool, "alice", "pub", SOURCE, "public")
    decoy = await register(pool, "bob", "decoy", SOURCE, "public")
    return pub.id, decoy.id, alice, bob


async def _status(http: aiohttp.ClientSession, url: str, body: dict[str, Any],
                  headers: dict[str, str]) -> tuple[int, Any]:
    async with http.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_a_deployment_name_shaped_like_a_model_id_is_422_on_every_surface(
        api: str, http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    """The review's decoy: Bob deploys `decoy` named after Alice's model id. Before: 202."""
    pub, _, _, bob = await _models(pool)
    name = str(pub)
    for path, body in (
            ("/deploy", {"embedding_model_id": "bob/decoy", "config": {"deployment_name": name}}),
            ("/api/v2/deploy/bob/decoy", {"deployment_name": name}),
            ("/api/v1/deploy/run", {"model_identifier": "bob/decoy", "deployment_name": name})):
        status, answer = await _status(http, api + path, body, bob)
        assert status == 422 and "model id" in answer["message"], (path, answer)
    status, answer = await _status(http, f"{api}/deploy", {
        "embedding_model_id": "bob/decoy", "config": {"deployment_name": "decoy-1"}}, bob)
    assert status == 202, answer


async def _rename(pool: asyncpg.Pool, model_id: UUID, name: str, hold_s: float) -> None:
    """What a rollout does on a redeploy under a new name (worker/rollout.py `_switch`)."""
    _, generation = await deployments.begin_generation(pool, model_id, name)
    async with transaction(pool) as conn:
        await deployments.switch(conn, model_id, generation, name, {}, name_hold_s=hold_s)


async def test_a_name_freed_by_a_rename_is_held_for_its_model_for_a_while(
        api: str, http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    """Before: Bob took `first` the moment Alice's deployment was renamed away from it."""
    pub, _, alice, bob = await _models(pool)
    await serve_from(pool, pub, "first", ["http://127.0.0.1:9"])
    await _rename(pool, pub, "second", hold_s=3600)

    def deploy(model: str, name: str) -> dict[str, Any]:
        return {"embedding_model_id": model, "config": {"deployment_name": name}}

    status, answer = await _status(http, f"{api}/deploy", deploy("bob/decoy", "first"), bob)
    assert status == 409 and "held" in answer["message"], answer
    status, answer = await _status(http, f"{api}/deploy", deploy("bob/decoy", "second"), bob)
    assert status == 409, answer  # Alice's current name
    await _rename(pool, pub, "third", hold_s=0.2)  # a short hold lapses
    await asyncio.sleep(0.5)
    status, answer = await _status(http, f"{api}/deploy", deploy("bob/decoy", "second"), bob)
    assert status == 202, answer
    status, answer = await _status(http, f"{api}/deploy", deploy("alice/pub", "first"), alice)
    assert status == 202, answer  # her own held name is hers to take back


async def test_secrets_of_a_model_whose_id_a_deployment_took_as_its_name_are_not_a_500(
        api: str, http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    """store_secrets named its placeholder row after the model id: a deployment already
    named so (made before such names were refused) made Alice's deploy with a key a 500."""
    pub, decoy, alice, _ = await _models(pool)
    await deployments.begin_generation(pool, decoy, str(pub))  # the squat, as a legacy row
    status, answer = await _status(http, f"{api}/api/v1/deploy/run",
                                   {"model_identifier": "alice/pub", "genai_key": "k-1"}, alice)
    assert status == 202, answer
    assert await deployments.get_secrets(pool, pub) is not None


@pytest.mark.skipif(find_haproxy(Settings()) is None, reason="haproxy is not installed")
async def test_on_haproxy_a_model_id_reaches_its_model_not_a_decoy_named_after_it(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        clean: None, tmp_path: Path) -> None:
    """The review's decoy on the HAProxy engine, as a row made before names were checked:
    before, `/serve/<alice's id>` reached Bob's replica when his route was written last."""
    pub, decoy, _, _ = await _models(pool)
    servers = [start_server(tmp_path, MODEL_SERVER_BACKEND="hashing",
                            MODEL_SERVER_DIMENSION="16") for _ in range(2)]
    try:
        for server in servers:
            await poll_health(http, server)
        alice_replica, = await serve_from(pool, pub, "pub", [servers[0].url])
        await serve_from(pool, decoy, str(pub), [servers[1].url])  # written last
        base = await start_gateway(spawn, http, gateway_engine="haproxy", haproxy_slots=4)
        seen: set[str] = set()
        for _ in range(100):  # until HAProxy serves both directly, then some more
            async with http.post(f"{base}/serve/{pub}/embed", json={"inputs": "hi"}) as resp:
                assert resp.status == 200, await resp.text()
                seen.add(resp.headers["X-Greenroom-Replica"])
            await asyncio.sleep(0.02)
        assert seen == {str(alice_replica)}, seen
    finally:
        for server in servers:
            server.stop()

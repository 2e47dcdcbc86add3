"""Review L2: inputs that made a 5xx. Postgres text and jsonb cannot hold U+0000 (asyncpg
raises CharacterNotInRepertoireError). A NUL in a JSON body (login username, a task `id`,
feedback) was already a 422 at 4861aa2 (edge/parsing.py refuses it; these tests pin
it); a NUL in a path (`/api/v2/users/ad%00min/usage`) reached SQL and was a 500. Now every
such input is a 4xx with the JSON error body, on the real API and gateway."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import Proc, start_gateway
from tests.gateway.test_gateway_answers import serve_from
from tests.model_server.conftest import poll_health, start_server
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)

NUL_BODIES = [
    ("POST", "/api/v2/auth/login", {"username": "ad\u0000min", "password": "whatever-1"}),
    ("POST", "/deploy", {"embedding_model_id": "admin/nul", "id": "task\u0000id"}),
    ("POST", "/deploy", {"embedding_model_id": "admin/n\u0000ul"}),
    ("POST", "/api/v2/models", {"name": "n\u0000ul"}),
]
NUL_PATHS = [
    "/deploy/%00", "/delete/%00", "/scale/%00", "/api/v2/tasks/%00",
    "/api/v2/models/admin/n%00ul", "/deploy-status/admin/n%00ul",
    "/api/v2/deployments/admin/n%00ul", "/api/v2/users/ad%00min/usage",
    "/api/v1/deploy/permissions/admin/n%00ul", "/api/v2/models/admin/n%00ul/permissions",
]


@pytest.mark.parametrize(("method", "path", "body"), NUL_BODIES,
                         ids=[f"{m} {p} {list(b)}" for m, p, b in NUL_BODIES])
async def test_a_nul_in_a_json_body_is_a_4xx(api: str, http: aiohttp.ClientSession,
                                            admin_headers: dict[str, str], method: str,
                                            path: str, body: dict[str, Any]) -> None:
    async with http.request(method, api + path, json=body, headers=admin_headers) as resp:
        answer = await resp.json()
        assert 400 <= resp.status < 500 and answer["status_code"] == resp.status, answer


@pytest.mark.parametrize("path", NUL_PATHS)
async def test_a_nul_in_a_path_is_a_4xx(api: str, http: aiohttp.ClientSession,
                                        admin_headers: dict[str, str], path: str) -> None:
    async with http.get(api + path, headers=admin_headers) as resp:
        answer = await resp.json(content_type=None)
        assert 400 <= resp.status < 500 and answer["status_code"] == resp.status, answer


async def test_a_nul_in_feedback_or_a_deployment_name_at_the_gateway_is_a_4xx(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, clean: None, tmp_path: Path) -> None:
    model_id = await hashing_model("fb")
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="hashing", MODEL_SERVER_DIMENSION="8")
    try:
        await poll_health(http, server)
        await serve_from(pool, model_id, "fb", [server.url])
        base = await start_gateway(spawn, http)
        feedback = {"event": "associate", "source": "a\u0000b", "target": "c"}
        async with http.post(f"{base}/serve/fb/feedback", json=feedback) as resp:
            answer = await resp.json()
            assert resp.status == 422 and "NUL" in answer["message"], answer
        for url, body in ((f"{base}/serve/f%00b/embed", {"inputs": "x"}),
                          (f"{base}/v1/embeddings", {"model": "f\u0000b", "input": "x"})):
            async with http.post(url, json=body) as resp:
                answer = await resp.json()
                assert 400 <= resp.status < 500, answer
    finally:
        server.stop()


async def test_a_non_ascii_request_id_at_the_api_is_not_a_500(
        api: str, http: aiohttp.ClientSession) -> None:
    """Review L2 on the API: the id is echoed in the answer and bound to its log lines."""
    for value in ("€", "x" * 300):
        async with http.get(f"{api}/healthz", headers={"X-Request-Id": value}) as resp:
            assert resp.status == 200, await resp.text()
            echoed = resp.headers["X-Request-Id"]
            assert echoed.isascii() and 0 < len(echoed) <= 256, echoed
    async with http.get(f"{api}/healthz", headers={"X-Request-Id": "abc-123"}) as resp:
        assert resp.headers["X-Request-Id"] == "abc-123"


async def test_a_long_idempotency_key_is_a_422_on_every_route_that_reads_it(
        api: str, http: aiohttp.ClientSession, admin_headers: dict[str, str],
        hashing_model: Any) -> None:
    """A key past Postgres's index row limit reached the insert and came back as a 500
    (review of the merge); the header is held to the body `id`'s 200 characters."""
    await hashing_model("keyed")
    long_key = {"Idempotency-Key": "k" * 3000, **admin_headers}
    for method, path, body in (
            ("POST", "/deploy", {"embedding_model_id": "alice/keyed"}),
            ("POST", "/api/v2/deploy/alice/keyed", {}),
            ("POST", "/api/v2/deploy/alice/keyed/scale", {"replicas": 1})):
        async with http.request(method, api + path, json=body, headers=long_key) as resp:
            answer = await resp.json(content_type=None)
            assert resp.status == 422, (path, resp.status, answer)
        assert "Idempotency-Key must be 1 to 200 characters" in answer["message"], answer

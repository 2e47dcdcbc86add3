"""Issue 24, must-show 6: a method a route does not take is a 405 with `Allow` (RFC 9110,
section 15.5.6) naming the methods it does take, and the JSON error body, on the API and on
the gateway (each has its own error middleware)."""

from typing import Any

import aiohttp

# (method sent, path, methods the path takes)
API_CASES = [
    ("TRACE", "/deploy", {"POST"}),
    ("PUT", "/deploy/0b8e4f8e-5d0e-4c61-9d7a-2f4b3f3c9a10", {"GET"}),
    ("DELETE", "/healthz", {"GET"}),
    ("PATCH", "/api/v2/users", {"GET", "POST"}),
    ("GET", "/api/v2/auth/login", {"POST"}),
    ("PUT", "/api/v2/deploy/alice/minilm", {"POST", "DELETE"}),
    ("POST", "/docs", {"GET"}),
]
GATEWAY_CASES = [
    ("GET", "/v1/embeddings", {"POST"}),
    ("TRACE", "/serve/minilm/embed", {"POST"}),
    ("DELETE", "/serve/minilm/info", {"GET"}),
    ("PUT", "/healthz", {"GET"}),
]


def _methods(allow: str) -> set[str]:
    return {m.strip() for m in allow.split(",") if m.strip()}


async def _check(http: aiohttp.ClientSession, base: str,
                 cases: list[tuple[str, str, set[str]]]) -> None:
    for method, path, allowed in cases:
        async with http.request(method, base + path) as resp:
            assert resp.status == 405, (method, path, resp.status)
            assert "Allow" in resp.headers, (method, path, dict(resp.headers))
            assert _methods(resp.headers["Allow"]) == allowed, (method, path,
                                                                resp.headers["Allow"])
            assert resp.content_type == "application/json", (method, path)
            body: dict[str, Any] = await resp.json()
            assert body["status_code"] == 405 and body["message"], body


async def test_the_api_answers_405_with_allow(api: str, http: aiohttp.ClientSession) -> None:
    await _check(http, api, API_CASES)


async def test_the_gateway_answers_405_with_allow(gateway: str,
                                                  http: aiohttp.ClientSession) -> None:
    await _check(http, gateway, GATEWAY_CASES)

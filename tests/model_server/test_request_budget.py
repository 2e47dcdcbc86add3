"""Review M6: bounded work per request on the model server. A request whose inputs x tokens
pass `max_request_tokens`, or whose answer would pass `max_response_floats` numbers, is a
413 naming the limit, on /embed, /embed_all, /tokenize and /v1/embeddings; the review's
1 MB /embed_all attack (answered with ~290 MB before) is refused by a real model server."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.model_server.conftest import (
    AppClient,
    hashing_settings,
    make_client,
    poll_health,
    start_server,
    wait_until_healthy,
)

MakeClient = Callable[..., Any]
__all__ = ["make_client"]  # the model server tests' fixture, used here
# The review's body: 256 inputs of 4,000 characters, about 1.02 MB.
ATTACK = json.dumps({"inputs": ["a " * 2000] * 256}).encode()


async def _refused(response: aiohttp.ClientResponse, limit: str) -> dict[str, Any]:
    body: dict[str, Any] = await response.json()
    assert response.status == 413, body
    assert body["status_code"] == 413 and limit in body["message"], body
    assert limit in body["detail"], body
    return body


@pytest.fixture
async def small_budget(make_client: MakeClient) -> AppClient:
    """A hashing model server allowed 100 tokens and 2,000 numbers per request (dim 64)."""
    client: AppClient = await make_client(hashing_settings(max_request_tokens=100,
                                                           max_response_floats=2000))
    await wait_until_healthy(client)
    return client


async def test_embed_over_the_token_budget_is_413_naming_it(small_budget: AppClient) -> None:
    assert (await small_budget.post("/embed", json={"inputs": ["word " * 40] * 2})).status == 200
    await _refused(await small_budget.post("/embed", json={"inputs": ["word " * 40] * 3}),
                   "max_request_tokens")


async def test_embed_all_counts_its_tokens_and_its_per_token_answer(
        small_budget: AppClient) -> None:
    # 20 bytes + [CLS] [SEP] = 22 tokens x 64 = 1,408 numbers: within both limits.
    ok = await small_budget.post("/embed_all", json={"inputs": "a" * 20})
    assert ok.status == 200 and len((await ok.json())[0]) == 22
    # 40 tokens are within the token budget, but 40 x 64 = 2,560 numbers are not.
    body = await _refused(await small_budget.post("/embed_all", json={"inputs": "a" * 38}),
                          "max_response_floats")
    assert body["detail"] == {"floats": 40 * 64, "max_response_floats": 2000}
    await _refused(await small_budget.post("/embed_all", json={"inputs": ["a" * 60] * 2}),
                   "max_request_tokens")


async def test_tokenize_over_the_token_budget_is_413(small_budget: AppClient) -> None:
    assert (await small_budget.post("/tokenize", json={"inputs": "a" * 90})).status == 200
    await _refused(await small_budget.post("/tokenize", json={"inputs": ["a" * 60] * 2}),
                   "max_request_tokens")


async def test_openai_embeddings_over_the_budgets_are_413(small_budget: AppClient) -> None:
    ok = await small_budget.post("/v1/embeddings", json={"input": ["word " * 40] * 2,
                                                         "model": "m"})
    assert ok.status == 200
    body = await _refused(await small_budget.post(
        "/v1/embeddings", json={"input": ["word " * 40] * 3, "model": "m"}), "max_request_tokens")
    assert body["code"] == 413  # the OpenAI error shape TEI serves
    # 40 inputs x 64 dimensions = 2,560 numbers.
    await _refused(await small_budget.post("/v1/embeddings",
                                           json={"input": ["x"] * 40, "model": "m"}),
                   "max_response_floats")


async def test_the_review_1mb_embed_all_attack_is_refused_by_a_real_model_server(
        tmp_path: Path) -> None:
    """Before: 200 and ~290 MB (every input's every token's 384 numbers). Now: 413 at once."""
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="hashing",
                          MODEL_SERVER_DIMENSION="384")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            await poll_health(http, server)
            headers = {"Content-Type": "application/json"}
            async with http.post(f"{server.url}/embed_all", data=ATTACK,
                                 headers=headers) as response:
                body = await _refused(response, "max_request_tokens")
                assert len(await response.read()) < 1000
            # 256 inputs cut at 512 tokens each.
            assert body["detail"] == {"tokens": 256 * 512, "max_request_tokens": 16384}
            for path in ("/embed", "/tokenize"):
                async with http.post(server.url + path, data=ATTACK, headers=headers) as response:
                    await _refused(response, "max_request_tokens")
    finally:
        server.stop()

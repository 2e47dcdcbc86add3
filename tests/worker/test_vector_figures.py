"""The compatibility gate's figures (worker/vector_figures.py): numpy maths on vectors whose
answers are known, no replica."""

from dataclasses import replace

import numpy as np
import pytest

from worker import compatibility
from worker.vector_figures import (
    Figures,
    compare,
    nearest,
    neighbour_overlap,
    row_cosines,
    shortfalls,
)

RNG = np.random.default_rng(26)


def _vectors(rows: int = 200, dimension: int = 64) -> np.ndarray:
    return RNG.standard_normal((rows, dimension)).astype(np.float32)


def test_identical_vectors_agree_fully() -> None:
    old = _vectors()
    figures = compare(old, old.copy())
    assert (figures.dimension_old, figures.dimension_new, figures.sentences) == (64, 64, 200)
    assert figures.cosine_mean == pytest.approx(1.0) and figures.cosine_min == pytest.approx(1.0)
    assert figures.neighbour_overlap == 1.0 and figures.neighbours == 10
    assert figures.norm_mean_old == pytest.approx(float(np.linalg.norm(old, axis=1).mean()))
    assert shortfalls(figures) == []


def test_scale_changes_the_norm_not_the_space() -> None:
    """A model that only scales its vectors (e.g. a different pooling scale) is the same
    space: cosine and neighbours are unchanged, the norms say what changed."""
    old = _vectors()
    figures = compare(old, old * 3)
    assert figures.norm_mean_new == pytest.approx(3 * figures.norm_mean_old, rel=1e-5)
    assert figures.cosine_mean == pytest.approx(1.0) and shortfalls(figures) == []


def test_tiny_noise_passes_and_a_rotation_is_refused() -> None:
    """fp32 export-sized noise stays in the space; an orthogonal rotation keeps every
    neighbour (the geometry) but no vector is comparable with its old self."""
    old = _vectors()
    noisy = old + RNG.standard_normal(old.shape).astype(np.float32) * 1e-4
    assert shortfalls(compare(old, noisy)) == []
    rotation, _ = np.linalg.qr(RNG.standard_normal((64, 64)))
    rotated = (old @ rotation).astype(np.float32)
    figures = compare(old, rotated)
    assert figures.neighbour_overlap == pytest.approx(1.0)
    assert figures.cosine_mean is not None and abs(figures.cosine_mean) < 0.2
    assert [s.split(" ")[1] for s in shortfalls(figures)] == ["cosine"]


def test_unrelated_vectors_fail_both_floors() -> None:
    figures = compare(_vectors(), _vectors())
    assert figures.cosine_mean is not None and figures.cosine_mean < 0.2
    assert figures.neighbour_overlap < 0.3
    found = shortfalls(figures)
    assert len(found) == 2 and "mean cosine" in found[0] and "neighbour overlap" in found[1]


def test_a_dimension_change_has_no_cosine_but_still_an_overlap() -> None:
    old = _vectors(dimension=64)
    figures = compare(old, old[:, :32])
    assert (figures.dimension_old, figures.dimension_new) == (64, 32)
    assert figures.cosine_mean is None and figures.cosine_min is None
    assert 0 < figures.neighbour_overlap < 1
    assert shortfalls(figures)[0] == "dimension 64 → 32"


def test_the_floors_are_exclusive_at_the_line() -> None:
    """The flip is refused *below* 0.99 and 0.9: at the line it passes."""
    at_line = Figures(sentences=200, dimension_old=384, dimension_new=384, norm_mean_old=1.0,
                      norm_mean_new=1.0, cosine_mean=0.99, cosine_min=0.9, neighbours=10,
                      neighbour_overlap=0.9)
    assert shortfalls(at_line) == []
    assert len(shortfalls(replace(at_line, cosine_mean=0.98999))) == 1
    assert len(shortfalls(replace(at_line, neighbour_overlap=0.8995))) == 1
    # A pair of vectors at a known angle reads that cosine.
    old = np.eye(20, dtype=np.float32)
    angle = np.arccos(0.99)
    new = (old * np.cos(angle) + np.roll(old, 1, axis=1) * np.sin(angle)).astype(np.float32)
    assert row_cosines(old, new) == pytest.approx(np.full(20, 0.99), abs=1e-6)


def test_neighbours_exclude_self_and_break_ties_by_index() -> None:
    points = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [-1, 0]], dtype=np.float32)
    near = nearest(points, 2)
    assert near[0].tolist() == [1, 3] and near[2].tolist() == [3, 1]
    assert all(i not in row for i, row in enumerate(near.tolist()))
    # Two equal rows: ties give the same neighbours both times.
    assert neighbour_overlap(points, points.copy(), 2) == 1.0


def test_zero_rows_agree_only_with_zero_rows() -> None:
    old = np.array([[0, 0], [1, 0], [0, 0]], dtype=np.float32)
    new = np.array([[0, 0], [1, 0], [1, 0]], dtype=np.float32)
    assert row_cosines(old, new).tolist() == [1.0, 1.0, 0.0]


def test_mismatched_or_tiny_inputs_are_an_error() -> None:
    with pytest.raises(ValueError):
        compare(_vectors(rows=5), _vectors(rows=6))
    with pytest.raises(ValueError):
        compare(_vectors(rows=1), _vectors(rows=1))


def test_the_bundled_probe_set_is_at_least_200_distinct_sentences() -> None:
    probe = compatibility.bundled_probe()
    assert len(probe) >= 200 and len(set(probe)) == len(probe)
    assert all(0 < len(s) <= 500 for s in probe)

"""How alike two generations' vectors of the same sentences are: pure numpy, no I/O.

The compatibility gate (worker/compatibility.py) reads these figures: each generation's
dimension and mean norm, the cosine between the old and the new vector of each sentence
(only when the dimensions agree: otherwise no index could hold both), and how many of each
sentence's nearest neighbours within the probe set stay its neighbours (computed in each
generation's own space, so it is defined across a dimension change too).
"""

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.rollout import MIN_MEAN_COSINE, MIN_NEIGHBOUR_OVERLAP, NEIGHBOURS

Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Figures:
    sentences: int
    dimension_old: int
    dimension_new: int
    norm_mean_old: float
    norm_mean_new: float
    cosine_mean: float | None
    cosine_min: float | None
    neighbours: int
    neighbour_overlap: float

    def as_json(self) -> dict[str, Any]:
        """Rounded for a task's metadata (six places: 0.99 and 0.989999 stay apart)."""
        return {key: round(value, 6) if isinstance(value, float) else value
                for key, value in asdict(self).items()}


def unit_rows(vectors: Matrix) -> Matrix:
    """Each row at length 1; an all-zero row stays zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: Matrix = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return unit


def row_cosines(old: Matrix, new: Matrix) -> npt.NDArray[np.float64]:
    """Cosine between row i of `old` and row i of `new`. Two zero rows agree (1.0); one
    zero row beside a non-zero one does not (0.0)."""
    a, b = unit_rows(old).astype(np.float64), unit_rows(new).astype(np.float64)
    cosines = np.einsum("ij,ij->i", a, b)
    both_zero = ~a.any(axis=1) & ~b.any(axis=1)
    return np.where(both_zero, 1.0, np.clip(cosines, -1.0, 1.0))


def nearest(vectors: Matrix, k: int) -> npt.NDArray[np.intp]:
    """Each row's `k` nearest other rows by cosine, nearest first (a row is never its own
    neighbour; ties go to the lower index, so equal inputs give equal answers)."""
    unit = unit_rows(vectors).astype(np.float64)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1, kind="stable")
    return order[:, :k]


def neighbour_overlap(old: Matrix, new: Matrix, k: int) -> float:
    """Mean over sentences of the share of its `k` nearest neighbours in `old` that are
    also among its `k` nearest in `new`."""
    before, after = nearest(old, k), nearest(new, k)
    shared = [len(set(b) & set(a)) for b, a in zip(before.tolist(), after.tolist(), strict=True)]
    return float(np.mean(shared)) / k


def compare(old: Matrix, new: Matrix, k: int = NEIGHBOURS) -> Figures:
    """The figures for two generations' vectors of the same sentences (row i: sentence i)."""
    if len(old) != len(new) or len(old) < 2:
        raise ValueError(f"need the same sentences from both, at least 2: {len(old)}, {len(new)}")
    k = min(k, len(old) - 1)
    same_dimension = old.shape[1] == new.shape[1]
    cosines = row_cosines(old, new) if same_dimension else None
    return Figures(
        sentences=len(old), dimension_old=int(old.shape[1]), dimension_new=int(new.shape[1]),
        norm_mean_old=float(np.linalg.norm(old, axis=1).mean()),
        norm_mean_new=float(np.linalg.norm(new, axis=1).mean()),
        cosine_mean=None if cosines is None else float(cosines.mean()),
        cosine_min=None if cosines is None else float(cosines.min()),
        neighbours=k, neighbour_overlap=neighbour_overlap(old, new, k))


def shortfalls(figures: Figures) -> list[str]:
    """What keeps the two generations out of one space (empty: interchangeable)."""
    found = []
    if figures.dimension_old != figures.dimension_new:
        found.append(f"dimension {figures.dimension_old} → {figures.dimension_new}")
    if figures.cosine_mean is not None and figures.cosine_mean < MIN_MEAN_COSINE:
        found.append(f"mean cosine {figures.cosine_mean:.4f} < {MIN_MEAN_COSINE}")
    if figures.neighbour_overlap < MIN_NEIGHBOUR_OVERLAP:
        found.append(f"top-{figures.neighbours} neighbour overlap "
                     f"{figures.neighbour_overlap:.3f} < {MIN_NEIGHBOUR_OVERLAP}")
    return found


def summary(figures: Figures) -> str:
    """One line of the figures, for a task's detail and its events."""
    dimension = (str(figures.dimension_new) if figures.dimension_old == figures.dimension_new
                 else f"{figures.dimension_old} → {figures.dimension_new}")
    cosine = ("no cosine (dimensions differ)" if figures.cosine_mean is None else
              f"cosine mean {figures.cosine_mean:.4f} min {figures.cosine_min:.4f}")
    return (f"dimension {dimension}, {cosine}, top-{figures.neighbours} neighbour overlap "
            f"{figures.neighbour_overlap:.3f}, mean norm {figures.norm_mean_old:.3f} → "
            f"{figures.norm_mean_new:.3f}, over {figures.sentences} probe sentences")

"""How closely a variant (ONNX, int8) agrees with the reference backend, on a fixed set.

The set ships with the server (``data/``): varied sentences (short, long, code, numbers,
other scripts, one past the truncation length) and queries each paired with one of them.
Figures: the cosine between each sentence's two vectors (mean and worst), and the share
of queries whose nearest sentence is the same under both backends (top-1 agreement).
"""

import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from model_server.backends import Embeddings, Vectors, normalize_rows
from model_server.errors import BackendLoadError

DATA_DIR = Path(__file__).resolve().parent / "data"
SENTENCES_FILE = DATA_DIR / "agreement_sentences.txt"
QUERIES_FILE = DATA_DIR / "agreement_queries.tsv"
BATCH = 32

EmbedFn = Callable[[list[str]], Embeddings]


@dataclass(frozen=True, slots=True)
class AgreementSet:
    sentences: list[str]
    queries: list[str]
    answers: list[int]  # index in ``sentences`` of each query's passage


@functools.cache
def agreement_set() -> AgreementSet:
    """The shipped set; each query's passage must be one of the sentences."""
    sentences = [line for line in SENTENCES_FILE.read_text().splitlines() if line.strip()]
    index = {sentence: i for i, sentence in enumerate(sentences)}
    queries, answers = [], []
    for line in QUERIES_FILE.read_text().splitlines():
        if line.strip():
            query, passage = line.split("\t")
            queries.append(query)
            answers.append(index[passage])
    return AgreementSet(sentences, queries, answers)


@dataclass(frozen=True, slots=True)
class Agreement:
    """The figures, as recorded next to an export and reported by /info."""

    reference: str
    variant: str
    sentences: int
    queries: int
    mean_cosine: float
    min_cosine: float
    top1_agreement: float
    reference_top1_accuracy: float
    variant_top1_accuracy: float
    measured_at: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        return (f"mean cosine {self.mean_cosine:.4f}, min cosine {self.min_cosine:.4f}, "
                f"top-1 agreement {self.top1_agreement:.3f} on {self.sentences} sentences "
                f"and {self.queries} queries against {self.reference}")


def unit_vectors(embed: EmbedFn, texts: list[str]) -> Vectors:
    parts = [embed(texts[i : i + BATCH]).vectors for i in range(0, len(texts), BATCH)]
    return normalize_rows(np.concatenate(parts))


def set_vectors(embed: EmbedFn, data: AgreementSet | None = None) -> Vectors:
    """Unit vectors of the set's sentences, then its queries."""
    data = data or agreement_set()
    return unit_vectors(embed, data.sentences + data.queries)


def measure(ref: Vectors, variant: EmbedFn, *, reference_name: str,
            variant_name: str, data: AgreementSet | None = None) -> Agreement:
    """Embed the set with the variant and compare with the reference's ``set_vectors``."""
    data = data or agreement_set()
    var = set_vectors(variant, data)
    n = len(data.sentences)
    cosines = np.sum(ref[:n] * var[:n], axis=1)
    ref_top1 = np.argmax(ref[n:] @ ref[:n].T, axis=1)
    var_top1 = np.argmax(var[n:] @ var[:n].T, axis=1)
    answers = np.array(data.answers)
    return Agreement(
        reference=reference_name, variant=variant_name,
        sentences=n, queries=len(data.queries),
        mean_cosine=round(float(cosines.mean()), 6), min_cosine=round(float(cosines.min()), 6),
        top1_agreement=round(float(np.mean(ref_top1 == var_top1)), 6),
        reference_top1_accuracy=round(float(np.mean(ref_top1 == answers)), 6),
        variant_top1_accuracy=round(float(np.mean(var_top1 == answers)), 6),
        measured_at=round(time.time(), 3),
    )


class AgreementRefused(BackendLoadError):
    """A variant that agrees with the reference less than the floors allow."""


def check_floors(agreement: Agreement, min_mean_cosine: float, min_top1: float) -> None:
    """Refuse the variant, with its figures, if it falls under either floor."""
    short = []
    if agreement.mean_cosine < min_mean_cosine:
        short.append(f"mean cosine {agreement.mean_cosine:.4f} < floor {min_mean_cosine}")
    if agreement.top1_agreement < min_top1:
        short.append(f"top-1 agreement {agreement.top1_agreement:.3f} < floor {min_top1}")
    if short:
        raise AgreementRefused(
            f"{agreement.variant} refused: {'; '.join(short)} ({agreement.summary()})"
        )

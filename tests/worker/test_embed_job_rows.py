"""Issue 30: how the worker turns a replica's answer into result rows (worker/embed_job.py):
cut as bytes when the replica shaped the vectors, read and shaped here when the job cuts
them (`dimensions`) or the answer has another form; and how it reads an input line."""

import numpy as np
import orjson
import pytest

from schemas.task_payloads import EmbedPayload
from worker.embed_job import JobFailed, parse_line, rows_of


def _answer(vectors: np.ndarray) -> bytes:
    return orjson.dumps(vectors, option=orjson.OPT_SERIALIZE_NUMPY)


def test_rows_cut_as_bytes_are_the_replicas_vectors() -> None:
    vectors = np.random.default_rng(3).standard_normal((5, 7)).astype(np.float32)
    rows = rows_of(_answer(vectors), 5, EmbedPayload(generation=1))
    assert np.array_equal(np.array([orjson.loads(r) for r in rows], np.float32), vectors)


def test_dimensions_cut_then_normalise_like_openai() -> None:
    vectors = np.random.default_rng(4).standard_normal((3, 8)).astype(np.float32)
    rows = rows_of(_answer(vectors), 3, EmbedPayload(generation=1, dimensions=4))
    got = np.array([orjson.loads(r) for r in rows], np.float32)
    cut = vectors[:, :4] / np.linalg.norm(vectors[:, :4], axis=1, keepdims=True)
    assert np.allclose(got, cut, atol=1e-6)
    raw = rows_of(_answer(vectors), 3, EmbedPayload(generation=1, dimensions=4,
                                                    normalize=False))
    assert np.allclose(np.array([orjson.loads(r) for r in raw]), vectors[:, :4])


def test_an_answer_of_another_form_is_read_and_a_wrong_count_fails_the_job() -> None:
    spaced = b"[[1.0, 2.0], [3.0, 4.0]]"
    assert [orjson.loads(r) for r in rows_of(spaced, 2, EmbedPayload(generation=1))] == [
        [1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(JobFailed, match="2 vectors for 3 inputs"):
        rows_of(spaced, 3, EmbedPayload(generation=1))
    with pytest.raises(JobFailed, match="more than the model's 2"):
        rows_of(spaced, 2, EmbedPayload(generation=1, dimensions=3))


@pytest.mark.parametrize(("line", "ident", "error"), [
    (b'{"id": "a", "text": "hello"}', "a", None),
    (b'{"id": 7, "text": "hello"}', 7, None),
    (b"not json", None, "not JSON"),
    (b'["a", "b"]', None, '"id"'),
    (b'{"id": true, "text": "x"}', None, '"id"'),
    (b'{"id": "a", "text": 5}', "a", "must be a string"),
    (b'{"id": "a", "text": "  "}', "a", "empty"),
    (b'{"id": "a", "text": "' + b"x" * 100 + b'"}', "a", "more than the 64"),
])
def test_input_lines(line: bytes, ident: object, error: str | None) -> None:
    item = parse_line(line, max_bytes=64)
    assert item.id == ident
    assert (item.error is None) if error is None else (error in (item.error or ""))

"""jsonb decoding on the pool (orjson where it agrees with json) reads every value as
json.loads does, the values orjson alone would read differently included."""

import json

import pytest

from db.pool import _loads

TEXTS = [
    '{"a": 1, "b": [1.5, -0.0, 1e+100, null, true], "c": {"d": "\\u00e9\\n"}}',
    '{"big": 123456789012345678901234567890}',  # orjson alone: a float
    '{"n": -9223372036854775809}',
    '{"huge": 1e400}',  # orjson alone: refused; json: inf
    '{"id": "12345678901234567890123"}',  # long digits inside a string
    "[]", '"text"', "42",
]


@pytest.mark.parametrize("text", TEXTS)
def test_decodes_as_json_loads_does(text: str) -> None:
    got, want = _loads(text), json.loads(text)
    assert got == want and json.dumps(got) == json.dumps(want)

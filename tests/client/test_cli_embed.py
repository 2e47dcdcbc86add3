"""Issue 30: `greenroom embed MODEL corpus.jsonl -o out.jsonl` against a running API and
worker (which share a state folder: the worker reads the job's input where the API put it),
run as a user runs it; then `--format npy`, and `embed-jobs list`."""

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.client.test_cli import _login
from tests.support import fork_server

INPUTS = 500


@pytest.fixture
def greenroom(stack: str, gateway: str, tmp_path: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    env |= {"GREENROOM_API_URL": stack, "GREENROOM_GATEWAY_URL": gateway,
            "GREENROOM_STATE_DIR": str(tmp_path / "cli")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return fork_server.run("launch.cli", args, env, tmp_path, timeout=120)
    return run


async def test_embed_a_corpus_with_progress_then_npy(greenroom: Any, admin_password: str,
                                                     tmp_path: Path) -> None:
    _login(greenroom, admin_password, tmp_path)
    done = greenroom("models", "register", "embedder", "--backend", "hashing",
                     "--dimension", "64", "--public")
    assert done.returncode == 0, done.stderr
    done = greenroom("deploy", "admin/embedder", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{n}", "text": f"document {n}"}) + "\n"
                              for n in range(INPUTS)) + '{"id": "bad"}\n')
    done = greenroom("embed", "admin/embedder", str(corpus), "-o", "out.jsonl")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{INPUTS:,} embedded, 1 failed" in done.stdout, done.stdout
    assert f"/{INPUTS + 1:,}" in done.stdout, "a progress line counts the inputs"
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"d{n}" for n in range(INPUTS)] + ["bad"]
    assert len(rows[0]["embedding"]) == 64 and "text" in rows[-1]["error"]

    done = greenroom("embed", "admin/embedder", str(corpus), "-o", "out.npy", "--format", "npy",
                     "--dimensions", "16")
    assert done.returncode == 0, done.stdout + done.stderr
    vectors = np.load(tmp_path / "out.npy")
    assert vectors.shape == (INPUTS, 16)
    # unit vectors after the cut (the hashing backend's sparse vectors may cut to zeros)
    norms = np.linalg.norm(vectors, axis=1)
    assert np.all(np.isclose(norms, 1.0, atol=1e-5) | (norms == 0)) and norms.max() > 0.99
    ids = [json.loads(line) for line in (tmp_path / "out.ids.jsonl").read_text().splitlines()]
    assert ids == [f"d{n}" for n in range(INPUTS)]
    listed = json.loads(greenroom("embed-jobs", "list", "--json").stdout)
    assert [j["status"] for j in listed] == ["done", "done"]

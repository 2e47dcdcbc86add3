"""`make up RUNTIME=docker` (issue 32): the model-server image built on first use with its
progress and reused after; the README's tutorial with replicas as containers."""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from launch import image
from tests.e2e.test_tutorial import _tutorial, fresh_clone
from tests.support.docker import skip_without_engine

skip_without_engine()


@pytest.fixture
def folder(embedded_tmp: Path) -> Iterator[Path]:
    with fresh_clone(embedded_tmp) as fresh:
        yield fresh


def test_up_builds_the_image_on_first_use_with_progress_and_reuses_it(docker_image: str) -> None:
    """What `up --runtime docker` calls before it starts anything (launch/up.py
    `_ensure_image`), on a tag of its own: a build that says how far it is, then none."""
    tag = f"{docker_image}-progress"
    lines: list[str] = []
    try:
        assert image.build(tag, with_model=False, progress=lines.append)
        assert lines[0].startswith(f"  image: building {tag} offline"), lines
        shares = [line for line in lines[1:] if "%" in line]
        assert len(shares) >= 5 and shares[-1].startswith("  image: 100%"), lines
        again: list[str] = []
        assert not image.build(tag, with_model=False, progress=again.append), "reused"
        assert again == []
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, check=False)


@pytest.mark.timeout(1200)
def test_the_readme_tutorial_works_on_docker_and_survives_a_restart(
        folder: Path, model_image: str) -> None:
    """The same tutorial with `make up RUNTIME=docker`: replicas are containers, Ctrl-C
    removes them, the next `up` starts them again. The image is the session's full model
    image (`up` finds it current rather than building its own: the test above
    shows the build)."""
    cluster = f"tutorial-{os.getpid()}"
    try:
        _tutorial(folder, {"GREENROOM_DOCKER_IMAGE": model_image, "GREENROOM_CLUSTER": cluster},
                  ["--runtime", "docker"])
        assert not _containers(cluster), "Ctrl-C removed every container up started"
    finally:
        if left := _containers(cluster):
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True, check=False)


def _containers(cluster: str) -> list[str]:
    found = subprocess.run(["docker", "ps", "-aq", "--filter",
                            f"label=io.greenroom.cluster={cluster}"],
                           capture_output=True, text=True, check=False)
    return found.stdout.split()

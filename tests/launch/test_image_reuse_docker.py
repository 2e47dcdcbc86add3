"""`image.build(..., any_tag=True)` (what the test fixtures build with): an image built from
the same inputs under another tag is named, not built again; other inputs still build."""

import subprocess

from launch import image
from tests.support.docker import skip_without_engine

skip_without_engine()


def _id(tag: str) -> str | None:
    return image._image_field(tag, "{{.Id}}")


def _ids_with_inputs(digest: str | None) -> set[str]:
    listed = subprocess.run(["docker", "image", "ls", "--quiet", "--no-trunc", "--filter",
                             f"label={image.INPUTS_LABEL}={digest}"],
                            capture_output=True, text=True, check=True).stdout.split()
    return set(listed)


def test_an_image_of_the_same_inputs_under_another_tag_is_tagged_not_built(
        docker_image: str) -> None:
    tag = f"{docker_image}-same-inputs"
    try:
        assert _id(tag) is None
        assert not image.build(tag, with_model=False, any_tag=True), "tagged, not built"
        # The tag names an image of the same inputs: this run's, or another checkout's
        # (several may exist on a machine that built from more than one folder).
        assert image.image_label(tag) == image.image_label(docker_image)
        assert _id(tag) in _ids_with_inputs(image.image_label(docker_image))
    finally:
        subprocess.run(["docker", "image", "rm", tag], capture_output=True, check=False)
    assert _id(docker_image) is not None, "removing the new tag leaves the image"


def test_no_image_of_the_same_inputs_is_no_match(docker_image: str) -> None:
    digest = image.image_label(docker_image)
    assert digest
    assert not image._tag_same_inputs("0" * 64, f"{docker_image}-none")
    assert _id(f"{docker_image}-none") is None

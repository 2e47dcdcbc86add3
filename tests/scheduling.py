"""Where each test runs under `make test`, which runs the suite in two phases:

1. the parallel phase: every test not marked `serial`, spread over pytest-xdist workers
   (`-n`, `--dist loadgroup`): most tests wait on I/O (health checks, rollouts, drains),
   so several at once fit on two cores;
2. the serial phase: the `serial` tests, one at a time, once the parallel phase is over.

`serial` marks timing-sensitive tests: they send paced load and assert on what it met
(latency percentiles, a request rate, no request lost to a timeout), so other tests
sharing the cores would change what they measure. Every test under SERIAL_DIRS is one;
elsewhere a test says so itself (`@pytest.mark.serial`).

In the parallel phase tests of one xdist group run on one worker, one after another:

- `docker`: every test on the Docker Engine (the `docker_image` fixture, or the `docker`
  marker): one worker builds the test images, and the containers of two rollouts do not
  compete for the cores;
- `browser`: the tests that drive the session's Chromium (the `browser` fixture);
- a module's own group (its path) when one of its fixtures is module-scoped: a model
  loaded once per module is loaded by one worker, not by each.
"""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Every autoscaling test drives paced load and times the autoscaler's reaction.
SERIAL_DIRS = ("tests/autoscale/",)
DOCKER_FIXTURES = {"docker_image", "model_image"}


def assign(items: list[pytest.Item]) -> None:
    """Mark the `serial` tests and put the parallel ones that must share a worker in groups."""
    for item in items:
        if _relative(item).startswith(SERIAL_DIRS):
            item.add_marker(pytest.mark.serial)
        group = group_of(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def group_of(item: pytest.Item) -> str | None:
    """The xdist group the test belongs to, None if it may run on any worker."""
    names = set(getattr(item, "fixturenames", ()))
    if names & DOCKER_FIXTURES or item.get_closest_marker("docker"):
        return "docker"
    if "browser" in names:
        return "browser"
    if _has_module_fixture(item):
        return _relative(item).split("::", 1)[0]
    return None


def _has_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(defs and defs[-1].scope == "module" for defs in info.name2fixturedefs.values())


def _relative(item: pytest.Item) -> str:
    return Path(item.path).resolve().relative_to(REPO).as_posix() + "::" + item.name

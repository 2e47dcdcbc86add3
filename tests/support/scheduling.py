"""Where each test runs under `make test`, which runs the suite in two phases
(tests/run.sh):

1. the parallel phase: every test not marked `serial`, spread over pytest-xdist workers
   (`-n`, `--dist loadgroup`): most tests wait on I/O (health checks, rollouts, drains),
   so several at once fit on two cores;
2. the serial phase: the `serial` tests, one at a time, once the parallel phase is over
   (or beside it, at normal CPU priority while the parallel phase runs at nice 19, with
   SIDE_BY_SIDE=1: tests/run.sh). Those on the Docker Engine run last (this module marks
   them `docker`), the swarm's last of all: beside the parallel phase, they then start
   once it is over.

`serial` marks timing-sensitive tests: they send paced load and assert on what it met
(latency percentiles, a request rate, no request lost to a timeout), so other tests
sharing the cores would change what they measure. Every test of SERIAL_MODULES is one;
elsewhere a test says so itself (`@pytest.mark.serial`).

In the parallel phase tests of one xdist group run on one worker, one after another:

- `docker`: every test on the Docker Engine (the `docker_image` fixture, or the `docker`
  marker; such a test is marked `docker` here): one worker builds the test images, and
  the containers of two rollouts do not compete for the cores;
- `browser`: the tests that drive the session's Chromium (the `browser` fixture);
- `onnx`: every test of a module where one uses `onnx_store` (the bundled model's ONNX
  export, minutes of CPU, made once per run): the worker that exports runs them all, so
  no other worker sits waiting for the export;
- a module's own group (its path) when one of its fixtures is module-scoped: a model
  loaded once per module is loaded by one worker, not by each.

A test outside the `onnx` group that needs the export too (a Docker test: it stays in
`docker`) runs after every other test of its group: by then the `onnx` worker has made
the export, so the `docker` worker does not sit waiting on the export's lock (minutes
under a full parallel phase) while it has other tests to run.
"""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Every autoscaling test of the process runtime drives paced load and times the
# autoscaler's reaction. (test_scale_task.py is not one: its load test says `serial`
# itself, and its input checks time nothing, so they run in the parallel phase.)
SERIAL_MODULES = tuple(f"tests/worker/test_{name}.py" for name in (
    "autoscale_load", "decider_killed", "redeploy_scaled", "scale_to_zero"))
DOCKER_FIXTURES = {"docker_image", "model_image"}


def assign(items: list[pytest.Item]) -> None:
    """Mark the `serial` tests and the Docker ones, put the parallel ones that must share a
    worker in groups, and move the tests that wait for another group's export to the end."""
    by_module: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_module.setdefault(_module(item), []).append(item)
        if _module(item) in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)
    waits_for_export: set[pytest.Item] = set()
    for module, tests in by_module.items():
        shared = _module_group(module, tests)
        for item in tests:
            own = _own_group(item)
            if own == "docker" and not item.get_closest_marker("docker"):
                item.add_marker(pytest.mark.docker)  # its place in the serial phase, if serial
            group = own or shared
            if group is not None:
                item.add_marker(pytest.mark.xdist_group(group))
            if group != "onnx" and "onnx_store" in _fixtures(item):
                waits_for_export.add(item)
    # Stable: every other test keeps its place (each xdist worker sorts alike). The serial
    # tests on the Docker Engine go last, the swarm's last of all: beside the parallel
    # phase (SIDE_BY_SIDE=1) they then start once it is over, with the Engine to themselves.
    items.sort(key=lambda item: (item in waits_for_export, _serial_rank(item)))


def _serial_rank(item: pytest.Item) -> int:
    """0 for most tests; 1 for a serial test on the Docker Engine, 2 on the swarm."""
    if not (item.get_closest_marker("serial") and item.get_closest_marker("docker")):
        return 0
    return 2 if _module(item).startswith("tests/multihost/") else 1


def _own_group(item: pytest.Item) -> str | None:
    """The group a test needs for itself: the Docker Engine's or the browser's."""
    names = _fixtures(item)
    if names & DOCKER_FIXTURES or item.get_closest_marker("docker"):
        return "docker"
    if "browser" in names:
        return "browser"
    return None


def _module_group(module: str, tests: list[pytest.Item]) -> str | None:
    """The group every other test of a module joins: `onnx`, or the module's own."""
    if any("onnx_store" in _fixtures(item) for item in tests):
        return "onnx"
    if any(_has_module_fixture(item) for item in tests):
        return module
    return None


def _fixtures(item: pytest.Item) -> set[str]:
    return set(getattr(item, "fixturenames", ()))


def _has_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(defs and defs[-1].scope == "module" for defs in info.name2fixturedefs.values())


def _module(item: pytest.Item) -> str:
    return Path(item.path).resolve().relative_to(REPO).as_posix()

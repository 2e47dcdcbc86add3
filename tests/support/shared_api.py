"""One API process for a whole module, for a module whose tests only call the API over
HTTP: none stops it, starts it with settings of its own or reads its state folder, so
none needs a process of its own (`api_process` builds the fixture of a module whose tests
share settings of their own). tests/conftest.py's `api` starts one per test (about
5 s each on a loaded machine); a module opts in to one per module with

    from tests.support.shared_api import module_api, shared_api  # noqa: F401

which gives its tests the fixture `api` (`shared_api`): the module's process, and, as
before, a clean database and Redis for each test (`clean`). A module-scoped fixture puts
the module's tests on one xdist worker (tests/support/scheduling.py), so one process
serves them all.
"""

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import START_TIMEOUT_S, Proc, process_settings
from tests.support.services import settings_env, wait_for_http
from worker.runtimes.process import free_port


@contextlib.asynccontextmanager
async def api_process(database_url: str, backing: dict[str, str], folder: Path,
                      **overrides: Any) -> AsyncIterator[str]:
    """An API process with the test settings (and `overrides`), its state folder and log in
    `folder`, for a module-scoped fixture: a module whose tests need an API with settings
    of their own builds its fixture on this one. Yields its base URL."""
    port = free_port("127.0.0.1")
    settings = process_settings(database_url, backing, folder / "state")
    proc = Proc("service", settings_env(settings.model_copy(
        update={"api_port": port, **overrides})), folder / "service.log")
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_for_http(http, base + "/healthz", timeout_s=START_TIMEOUT_S)
        yield base
    finally:
        proc.stop()


@pytest.fixture(scope="module")
async def module_api(database_url: str, backing: dict[str, str],
                     tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """The module's API process (the test settings, a state folder of its own)."""
    async with api_process(database_url, backing,
                           tmp_path_factory.mktemp("module-api")) as base:
        yield base


@pytest.fixture(name="api")
async def shared_api(module_api: str, clean: None) -> str:
    """The module's API, its database and Redis emptied before the test."""
    return module_api

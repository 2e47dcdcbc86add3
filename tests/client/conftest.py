"""Client and CLI fixtures: a running API and worker, and the administrator's login."""

from collections.abc import Callable

import pytest

from tests.conftest import ADMIN_PASSWORD, Proc


@pytest.fixture
async def stack(api: str, spawn: Callable[..., Proc], admin_user: object) -> str:
    """The API's URL, with one worker running and an administrator `admin` to log in as."""
    spawn("worker")
    return api


@pytest.fixture
def admin_password() -> str:
    return ADMIN_PASSWORD

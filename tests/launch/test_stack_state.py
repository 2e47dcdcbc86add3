"""`up`'s state folder: the secret is drawn once and private; the stack file fills in only
what GREENROOM_* leave unset."""

from pathlib import Path

import pytest

from launch import stack_state
from schemas.settings import Settings


def test_secret_key_is_drawn_once_and_private(tmp_path: Path) -> None:
    first = stack_state.secret_key(tmp_path)
    assert len(first) >= 32
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert stack_state.secret_key(tmp_path) == first, "a restart keeps every token valid"


def test_stack_file_fills_in_unset_settings_only(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GREENROOM_DATABASE_URL", "GREENROOM_REDIS_URL", "GREENROOM_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    stack_state.Stack(api_url="http://127.0.0.1:1", database_url="postgresql://stack/db",
                      redis_url="redis://stack:1/0", redis_port=1).save(tmp_path)
    assert (tmp_path / "stack.json").stat().st_mode & 0o777 == 0o600
    key = stack_state.secret_key(tmp_path)
    found = stack_state.settings_with_stack(Settings(state_dir=tmp_path))
    assert found.database_url == "postgresql://stack/db"
    assert found.redis_url == "redis://stack:1/0"
    assert found.secret_key is not None and found.secret_key.get_secret_value() == key

    monkeypatch.setenv("GREENROOM_DATABASE_URL", "postgresql://mine/db")
    mine = stack_state.settings_with_stack(Settings(state_dir=tmp_path))
    assert mine.database_url == "postgresql://mine/db", "a variable beats the stack file"
    assert mine.redis_url == "redis://stack:1/0"


def test_no_stack_no_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREENROOM_DATABASE_URL", raising=False)
    settings = Settings(state_dir=tmp_path / "nothing-here", database_url=None)
    assert stack_state.settings_with_stack(settings) is settings

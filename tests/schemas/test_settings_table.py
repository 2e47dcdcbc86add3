"""The settings table in docs/operations.md is the one the Settings class generates."""

from schemas.settings import Settings
from schemas.settings_table import OPERATIONS, render, table


def test_operations_settings_table_is_current() -> None:
    page = OPERATIONS.read_text()
    assert render(page) == page, "run: python -m schemas.settings_table"


def test_table_lists_every_setting() -> None:
    text = table()
    for name in Settings.model_fields:
        assert f"`GREENROOM_{name.upper()}`" in text


def test_every_setting_is_described() -> None:
    """A new setting needs a comment above it in schemas/settings.py."""
    for row in table().splitlines()[2:]:
        assert row.rstrip(" |").split(" | ")[-1].strip(), row

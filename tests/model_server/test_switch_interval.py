"""The model server shortens the GIL's switch interval (model_server/config.py): with
queries beside bulk work its event loop would otherwise keep the compute thread waiting up
to Python's default 5 ms at each hand-back."""

import sys

from model_server.config import Settings
from model_server.server import apply_process_settings


def test_the_switch_interval_is_the_setting_half_a_millisecond_by_default() -> None:
    before = sys.getswitchinterval()
    try:
        apply_process_settings(Settings())
        assert abs(sys.getswitchinterval() - 0.0005) < 1e-9
        apply_process_settings(Settings(gil_switch_interval_ms=2))
        assert abs(sys.getswitchinterval() - 0.002) < 1e-9
    finally:
        sys.setswitchinterval(before)

"""Issue 25, review M7 on the HAProxy engine: each slot backend sets its generation's replica
secret on what it passes to a replica, from a map filled only through the admin socket
(against the recording fake admin socket of tests/unit/test_haproxy_programmer.py; the real
HAProxy checks the configuration there when it is installed)."""

from pathlib import Path

from gateway.haproxy.config import render
from gateway.haproxy.programmer import Programmer
from schemas import replica_auth
from tests.conftest import TEST_SECRET_KEY
from tests.unit.test_haproxy_programmer import MODEL, RecordingApi, _layout, _route


async def test_each_generation_slot_gets_its_own_secret_before_traffic(tmp_path: Path) -> None:
    api = RecordingApi()
    layout = _layout(tmp_path)
    programmer = Programmer(api, layout, secret_key=TEST_SECRET_KEY)
    first, _ = _route(1, [7001])
    await programmer.apply([first])
    secrets = str(layout.secrets_map)
    one = replica_auth.generation_secret(TEST_SECRET_KEY, MODEL, 1)
    assert api.sent[0] == f"add map {secrets} slot0 {one}", "keyed before any server or name"
    second, _ = _route(2, [7002])
    api.sent.clear()
    await programmer.apply([second])
    two = replica_auth.generation_secret(TEST_SECRET_KEY, MODEL, 2)
    assert api.sent[0] == f"add map {secrets} slot1 {two}"
    assert one != two


def test_every_slot_backend_sets_the_secret_header_from_the_map(tmp_path: Path) -> None:
    layout = _layout(tmp_path, slots=3)
    text = render(layout)
    for slot in ("slot0", "slot1", "slot2"):
        line = (f"http-request set-header {replica_auth.HEADER} "
                f"%[str({slot}),map({layout.secrets_map})]")
        assert line in text, slot

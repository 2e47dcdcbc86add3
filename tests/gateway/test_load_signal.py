"""When a gateway reports at once (gateway/load_signal.py): pure counting, no processes."""

from uuid import uuid4

from gateway.load_signal import JUMP_MIN, LoadJumps


def test_a_rising_load_triggers_a_few_reports_not_one_per_request() -> None:
    jumps, model = LoadJumps(), uuid4()
    triggered = []
    for n in range(1, 65):  # 64 requests come in, none finishes
        if jumps.started(model):
            triggered.append(n)
            assert jumps.reported() == ([str(model)], True), "the report names and announces it"
            assert jumps.reported() == ([], False), "the next one, without a new jump, neither"
    assert triggered == [JUMP_MIN, 2 * JUMP_MIN, 4 * JUMP_MIN, 8 * JUMP_MIN, 16 * JUMP_MIN]


def test_steady_or_falling_load_waits_for_the_heartbeat() -> None:
    jumps, model = LoadJumps(), uuid4()
    for _ in range(10):
        jumps.started(model)
    jumps.reported()
    for _ in range(5):
        jumps.finished(model)
        assert not jumps.started(model), "as many in flight as reported: no jump"
        jumps.finished(model)
    assert jumps.reported() == ([], False) and jumps.inflight[model] == 5


def test_each_model_jumps_on_its_own_count() -> None:
    jumps, busy, quiet = LoadJumps(), uuid4(), uuid4()
    for _ in range(40):
        jumps.started(busy)
    jumps.reported()
    assert [jumps.started(quiet) for _ in range(JUMP_MIN)][-1], "a new model's 4 is a jump"
    assert jumps.reported() == ([str(quiet)], True), "only the model that jumped is named"


def test_a_held_request_is_announced_without_naming_a_jump() -> None:
    jumps = LoadJumps()
    jumps.wake = True
    assert jumps.reported() == ([], True)

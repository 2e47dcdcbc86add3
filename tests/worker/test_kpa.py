"""The KPA-like decision (worker/scaling/kpa.py), on a fake clock: pure arithmetic, no processes."""

from schemas.tasks import DeploymentConfig
from worker.scaling.kpa import Knobs, Scaler


def _scaler(**config: object) -> Scaler:
    values = {"autoscaling_enabled": True, "autoscaling_min": 1, "autoscaling_max": 8,
              "autoscaling_target_concurrency": 2, "autoscaling_target_utilization": 1.0,
              "autoscaling_stable_window_s": 10, "autoscaling_panic_window_s": 2,
              "autoscaling_scale_down_delay_s": 5, "autoscaling_scale_to_zero_grace_s": 4}
    return Scaler(Knobs.of(DeploymentConfig.model_validate(values | config)))


def _feed(scaler: Scaler, start: float, end: float, inflight: float) -> float:
    t = start
    while t < end:
        scaler.observe(t, inflight)
        t += 0.5
    return t


def test_steady_load_wants_mean_over_target() -> None:
    s = _scaler()
    t = _feed(s, 0, 10.5, 5.0)
    d = s.decide(t, ready=3)
    assert d is not None and d.desired == 3 and not d.panicking  # ceil(5 / 2)
    assert d.describe(s.knobs).startswith("scaled 3 → 3: 5.0 in flight over 10 s, target 2")


def test_no_decision_before_a_panic_window_is_seen() -> None:
    s = _scaler()
    s.observe(0, 9)
    assert s.decide(1, ready=1) is None


def test_a_jump_panics_up_at_once_and_never_down_while_panicking() -> None:
    s = _scaler()
    t = _feed(s, 0, 10, 1.0)
    t = _feed(s, t, t + 2, 12.0)  # the panic window sees 12, the stable one far less
    d = s.decide(t, ready=1)
    assert d is not None and d.panicking and d.desired == 6
    t = _feed(s, t, t + 2, 0.0)
    d = s.decide(t, ready=6)
    assert d is not None and d.panicking and d.desired == 6, "no scale-down while panicking"


def test_scale_down_waits_the_delay_and_halves_at_most() -> None:
    s = _scaler(autoscaling_stable_window_s=4, autoscaling_panic_window_s=1)
    t = _feed(s, 0, 5, 16.0)
    assert (d := s.decide(t, ready=8)) is not None and d.desired == 8
    t = _feed(s, t, t + 4.5, 0.0)  # the stable window is empty of load, the delay is not over
    assert (d := s.decide(t, ready=8)) is not None and d.desired == 8
    t = _feed(s, t, t + 5.5, 0.0)
    assert (d := s.decide(t, ready=8)) is not None and d.desired == 4, "halved, not 1"
    assert (d := s.decide(t, ready=4)) is not None and d.desired == 2


def test_clamped_to_min_and_max() -> None:
    s = _scaler(autoscaling_min=2, autoscaling_max=3)
    t = _feed(s, 0, 11, 100.0)
    assert (d := s.decide(t, ready=3)) is not None and d.desired == 3
    s = _scaler(autoscaling_min=2, autoscaling_max=3, autoscaling_scale_down_delay_s=0)
    t = _feed(s, 0, 11, 0.0)
    assert (d := s.decide(t, ready=2)) is not None and d.desired == 2


def test_zero_only_after_the_grace_and_demand_wakes_it() -> None:
    s = _scaler(autoscaling_min=0, autoscaling_scale_down_delay_s=0,
                autoscaling_stable_window_s=2, autoscaling_panic_window_s=1)
    t = _feed(s, 0, 3, 0.0)
    s.last_busy = 1.0
    assert (d := s.decide(t, ready=1)) is not None and d.desired == 1, "grace not over"
    t = _feed(s, t, 6, 0.0)
    assert (d := s.decide(t, ready=1)) is not None and d.desired == 0
    s.observe(t, 1.0)  # a held request: demand with no replica
    assert (d := s.decide(t, ready=0)) is not None and d.desired == 1 and d.panicking


def test_two_samples_over_the_threshold_panic_without_waiting_for_the_window() -> None:
    s = _scaler()
    t = _feed(s, 0, 10, 1.0)
    s.observe(t, 5.0)  # a regular tick's sample, not a jump
    d = s.decide(t, ready=1)
    assert d is not None and not d.panicking and d.desired == 1, "one sample is not enough"
    s.observe(t + 0.1, 6.0, periodic=False)  # a tick woken by another deployment's jump
    s.observe(t + 0.2, 6.0, periodic=False)  # twice: it counts against the regular one
    assert (d := s.decide(t + 0.2, ready=1)) is not None and d.panicking and d.desired == 3
    s = _scaler()
    t = _feed(s, 0, 10, 1.0)
    s.observe(t, 5.0, periodic=False)  # woken ticks' samples only, not jumps
    s.observe(t + 0.1, 11.0, periodic=False)
    d = s.decide(t + 0.1, ready=1)
    assert d is not None and not d.panicking, "the regular sample before them was 1"
    s.observe(t + 0.5, 11.0)  # the next regular tick: the one before it was still 1
    d = s.decide(t + 0.5, ready=1)
    assert d is not None and d.desired == 2, "the panic window's mean (3.5), not the latest"
    s.observe(t + 1.0, 11.0)  # and the one after: two regular samples in a row
    d = s.decide(t + 1.0, ready=1)
    assert d is not None and d.panicking and d.desired == 6  # ceil(11 / 2), not the mean's 2
    assert d.describe(s.knobs).startswith("scaled 1 → 6: 11.0 in flight in the latest samples")


def test_a_sample_a_gateway_reported_as_a_jump_panics_alone() -> None:
    s = _scaler()
    t = _feed(s, 0, 10, 1.0)
    s.observe(t, 5.0, periodic=False, jumped=True)
    d = s.decide(t, ready=1)
    assert d is not None and d.panicking and d.desired == 3  # ceil(5 / 2)
    s = _scaler()
    t = _feed(s, 0, 10, 1.0)
    s.observe(t, 2.0, periodic=False, jumped=True)  # a jump, but not past the threshold
    d = s.decide(t, ready=1)
    assert d is not None and not d.panicking and d.desired == 1


def test_samples_between_ticks_do_not_weigh_the_stable_mean() -> None:
    s = _scaler(autoscaling_panic_threshold=100)  # never panics: only the stable window
    t = _feed(s, 0, 10.5, 2.0)
    for i in range(20):  # twenty announced samples of a spike, between two ticks
        s.observe(t + i / 100, 40.0, periodic=False)
    s.observe(t + 0.5, 2.0)
    d = s.decide(t + 0.5, ready=1)
    assert d is not None and not d.panicking and d.desired == 1, "mean stays 2 / 2"


def test_an_announced_held_request_wakes_a_deployment_at_zero_at_once() -> None:
    s = _scaler(autoscaling_min=0)
    t = _feed(s, 0, 3, 0.0)
    s.observe(t, 1.0, periodic=False)  # the gateway announced a held request
    assert (d := s.decide(t, ready=0)) is not None and d.desired == 1 and d.panicking

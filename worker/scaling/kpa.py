"""The scaling decision for one deployment, after Knative's KPA (concurrency-based).

desired = ceil(mean in-flight over the stable window / (target * utilisation)). A short
panic window reacts at once when load jumps: once the latest sample is over the threshold
and is either a gateway's report of a jump (gateway/load_signal.py: in flight doubled and
up by at least four since that gateway's last report) or the regular tick's sample before
it was over it too, the panic value is the higher of its mean and the latest sample, so a
load step counts at once, not after a window's worth of samples (a sample at a random tick
alone may be noise; a jump is what the gateway saw happen). Once it wants `panic_threshold`
times the replicas ready, the decision follows it, and while panicking it never goes down;
panic ends after a whole stable window without the trigger. Going down, the count is the
highest wanted over the scale-down delay, one decision keeps at least ready/rate
replicas, and zero comes only after the scale-to-zero grace with nothing in flight.
The result is clamped to [min, max]. Pure: the caller supplies samples and the clock.

Samples come at the caller's regular tick (`periodic`) and, between ticks, when a gateway
announces a jump; only the regular ones enter the windows' means (so extra samples on a
rising edge do not weigh the mean), while every sample is the latest.
"""

import math
from collections import deque
from dataclasses import dataclass, field

from schemas.tasks import DeploymentConfig


@dataclass(frozen=True, slots=True)
class Knobs:
    target: float
    utilization: float
    stable_window_s: float
    panic_window_s: float
    panic_threshold: float
    scale_down_delay_s: float
    max_scale_down_rate: float
    scale_to_zero_grace_s: float
    min_replicas: int
    max_replicas: int

    @classmethod
    def of(cls, config: DeploymentConfig) -> "Knobs":
        return cls(
            target=config.autoscaling_target_concurrency,
            utilization=config.autoscaling_target_utilization,
            stable_window_s=config.autoscaling_stable_window_s,
            panic_window_s=min(config.autoscaling_panic_window_s,
                               config.autoscaling_stable_window_s),
            panic_threshold=config.autoscaling_panic_threshold,
            scale_down_delay_s=config.autoscaling_scale_down_delay_s,
            max_scale_down_rate=config.autoscaling_max_scale_down_rate,
            scale_to_zero_grace_s=config.autoscaling_scale_to_zero_grace_s,
            min_replicas=config.autoscaling_min,
            max_replicas=config.autoscaling_ceiling,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    ready: int
    average: float  # in flight, over `window_s` (0: the latest sample)
    window_s: float
    panicking: bool

    def describe(self, knobs: Knobs) -> str:
        mode = ", panic" if self.panicking else ""
        basis = f"over {self.window_s:g} s" if self.window_s else "in the latest samples"
        return (f"scaled {self.ready} → {self.desired}: {self.average:.1f} in flight {basis}, "
                f"target {knobs.target:g} at {knobs.utilization:.0%}{mode}")


@dataclass
class Scaler:
    """The leader's memory of one deployment: recent in-flight samples and wishes."""

    knobs: Knobs
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    wishes: deque[tuple[float, int]] = field(default_factory=deque)
    first_at: float | None = None
    last_busy: float | None = None
    panic_since: float | None = None
    panic_floor: int = 0
    latest: float = 0.0
    before_latest: float = 0.0  # the last regular tick's sample before the latest
    latest_jumped: bool = False

    def observe(self, now: float, inflight: float, periodic: bool = True,
                jumped: bool = False) -> None:
        """One sample of requests in flight (and held) across every gateway; `periodic`
        False for one taken between regular ticks (it is only the latest); `jumped` when a
        gateway reported it as a jump."""
        self.first_at = now if self.first_at is None else self.first_at
        if inflight > 0 or self.last_busy is None:
            self.last_busy = now
        # "Two in a row" means the latest and the regular tick's before it: a tick woken by
        # another deployment's jump reads this one's same (maybe unchanged) report again.
        self.before_latest = self.samples[-1][1] if self.samples else 0.0
        self.latest, self.latest_jumped = inflight, jumped
        if not periodic:
            return
        self.samples.append((now, inflight))
        while self.samples and self.samples[0][0] < now - self.knobs.stable_window_s:
            self.samples.popleft()

    def stable_mean(self, now: float) -> float:
        """The mean in flight over the stable window (the latest sample before any)."""
        return self._mean(now, self.knobs.stable_window_s) if self.samples else self.latest

    def _mean(self, now: float, window_s: float) -> float:
        values = [v for t, v in self.samples if t >= now - window_s]
        return sum(values) / len(values) if values else 0.0

    def decide(self, now: float, ready: int) -> Decision | None:
        """What the deployment should run; None until a panic window has been observed."""
        k = self.knobs
        if self.first_at is None or now - self.first_at < k.panic_window_s:
            return None
        per_replica = k.target * k.utilization
        stable, panic = self._mean(now, k.stable_window_s), self._mean(now, k.panic_window_s)
        panic_window = k.panic_window_s
        trigger = k.panic_threshold * max(1, ready)
        seen = self.latest if self.latest_jumped else min(self.latest, self.before_latest)
        confirmed = math.ceil(seen / per_replica) >= trigger
        if (confirmed or ready == 0) and self.latest > panic:  # at zero, any demand
            panic, panic_window = self.latest, 0.0
        want_stable, want_panic = math.ceil(stable / per_replica), math.ceil(panic / per_replica)
        if want_panic >= trigger or (ready == 0 and panic > 0):
            if self.panic_since is None:
                self.panic_floor = ready
            self.panic_since = now
        elif self.panic_since is not None and now - self.panic_since > k.stable_window_s:
            self.panic_since, self.panic_floor = None, 0
        if self.panic_since is not None:
            desired = self.panic_floor = max(want_panic, self.panic_floor, ready)
            average, window = panic, panic_window
            self._delayed(now, desired)  # scaling down after the panic waits the delay too
        else:
            desired, average, window = self._delayed(now, want_stable), stable, k.stable_window_s
            desired = self._bounded_down(now, ready, desired)
        desired = max(k.min_replicas, min(k.max_replicas, desired))
        return Decision(desired, ready, average, window, self.panic_since is not None)

    def _delayed(self, now: float, wanted: int) -> int:
        """The highest count wanted over the scale-down delay."""
        self.wishes.append((now, wanted))
        while self.wishes and self.wishes[0][0] < now - self.knobs.scale_down_delay_s:
            self.wishes.popleft()
        return max(w for _, w in self.wishes)

    def _bounded_down(self, now: float, ready: int, desired: int) -> int:
        if desired >= ready:
            return desired
        floor = math.ceil(ready / self.knobs.max_scale_down_rate) if ready > 1 else 0
        desired = max(desired, floor)
        idle_s = now - (self.last_busy if self.last_busy is not None else now)
        if desired == 0 and idle_s < self.knobs.scale_to_zero_grace_s:
            return 1
        return desired

"""How many replicas a deployment runs, decided in one function (issue 24): a deploy, a
redeploy that keeps the count serving, a scale, and the quota's cut, each against the rule
it followed before, when four modules decided it."""

import itertools

import pytest

from schemas.tasks import MAX_REPLICAS, DeploymentConfig, replica_count


def _config(**fields: object) -> DeploymentConfig:
    return DeploymentConfig.model_validate(fields)


@pytest.mark.parametrize(("fields", "count"), [
    ({}, 1),
    ({"replicas": 3}, 3),
    ({"autoscaling_min": 0}, 1),  # scales to zero later, starts at one
    ({"autoscaling_min": 3}, 3),  # the floor sets the count (with autoscaling off too)
    ({"autoscaling_enabled": True, "autoscaling_min": 2, "autoscaling_max": 5}, 2),
    ({"replicas": 4, "autoscaling_min": 2}, 4),
])
def test_a_first_deploy_runs_its_named_count_else_its_floor(fields: dict[str, object],
                                                             count: int) -> None:
    assert replica_count(_config(**fields)) == count


@pytest.mark.parametrize(("fields", "serving", "count"), [
    ({}, 5, 5),  # keeps its capacity
    ({}, 0, 1),  # scaled to zero: starts at its floor
    ({"replicas": 2}, 5, 2),  # a count the deploy names wins
    ({"autoscaling_min": 3}, 1, 3),  # never under the floor
    ({"autoscaling_enabled": True, "autoscaling_max": 4}, 9, 4),  # nor over the ceiling
    ({"autoscaling_enabled": True, "autoscaling_min": 2}, 9, 2),  # no max: the floor is it
    ({"autoscaling_max": 4}, 9, 9),  # autoscaling off: the max does not bind
    ({}, MAX_REPLICAS + 3, MAX_REPLICAS),
])
def test_a_redeploy_keeps_the_count_serving_within_its_bounds(
        fields: dict[str, object], serving: int, count: int) -> None:
    assert replica_count(_config(**fields), serving=serving) == count


@pytest.mark.parametrize(("scale_to", "room", "keep", "count"), [
    (3, None, 0, 3),  # no quota (an administrator)
    (3, 5, 0, 3),
    (12, 5, 0, 5),  # cut to the quota's room
    (0, 0, 1, 0),  # asked for none: none, whatever the room
    (3, 0, 1, 1),  # an autoscaler's scale keeps one replica serving
    (3, 0, 0, 0),
    (6, 2, 4, 4),  # the autoscaler keeps what is ready
])
def test_a_scale_runs_what_it_asks_cut_to_the_quota(scale_to: int, room: int | None,
                                                     keep: int, count: int) -> None:
    config = _config(replicas=2, autoscaling_enabled=True, autoscaling_max=3)
    assert replica_count(config, scale_to=scale_to, room=room, keep=keep) == count


# The rules as four modules wrote them before issue 24 (schemas/tasks.py, the worker's
# scaling/replica_count.py and scaling/scale_task.py, admission/quotas.py, at 4861aa2).
def _was_config_count(config: DeploymentConfig) -> int:
    return config.replicas or max(1, config.autoscaling_min)


def _was_carried_over(config: DeploymentConfig, current: int) -> int:
    if config.replicas is not None or current < 1:
        return _was_config_count(config)
    floor = max(1, config.autoscaling_min)
    ceiling = config.autoscaling_ceiling if config.autoscaling_enabled else MAX_REPLICAS
    return max(floor, min(current, ceiling))


def _was_allowed(wanted: int, room: int | None) -> int:
    return wanted if room is None else max(0, min(wanted, room))


CONFIGS = [_config(**fields) for fields in (
    {}, {"replicas": 1}, {"replicas": 7}, {"autoscaling_min": 0}, {"autoscaling_min": 4},
    {"autoscaling_enabled": True, "autoscaling_min": 0, "autoscaling_max": 6},
    {"autoscaling_enabled": True, "autoscaling_min": 3},
    {"autoscaling_enabled": True, "autoscaling_min": 2, "autoscaling_max": 2},
    {"autoscaling_max": 5, "autoscaling_min": 2},
)]


@pytest.mark.parametrize("config", CONFIGS)
def test_every_deploy_count_is_what_it_was(config: DeploymentConfig) -> None:
    assert replica_count(config) == _was_config_count(config)
    for serving in range(MAX_REPLICAS + 2):
        assert replica_count(config, serving=serving) == _was_carried_over(config, serving)


def test_every_scale_count_is_what_it_was() -> None:
    config = CONFIGS[0]
    for wanted, room in itertools.product(range(MAX_REPLICAS + 1), [None, *range(18)]):
        allowed = _was_allowed(wanted, room)
        # the quota's cut (what the autoscaler asks the quota for)
        assert replica_count(config, scale_to=wanted, room=room) == allowed
        # the scale task: none stays none, else at least one
        assert replica_count(config, scale_to=wanted, room=room, keep=1) == (
            max(1, allowed) if wanted > 0 else 0)
        # the autoscaler going up from `ready`
        for ready in range(wanted):
            assert replica_count(config, scale_to=wanted, room=room, keep=ready) == max(
                ready, allowed)

"""The task's payload per kind (issue 24): what the API writes is what the worker reads,
every shape stored before the payloads existed still reads, and a bad shape is refused."""

from typing import Any

import pytest
from pydantic import ValidationError

from schemas import task_payloads
from schemas.task_payloads import (
    DeletePayload,
    DeployPayload,
    ScalePayload,
    TaskPayload,
    TaskTarget,
    read,
)
from schemas.tasks import DeploymentConfig, TaskKind, TaskRequest


@pytest.mark.parametrize("payload", [
    DeployPayload(embedding_model_id="alice/m"),
    DeployPayload(embedding_model_id="alice/m", config=DeploymentConfig.model_validate({
        "name": "web", "replicas": 3, "memory": 512, "env": {"A": "b"}, "custom": 1,
        "onnx": {"quantize": "int8"}, "autoscaling_enabled": True, "autoscaling_max": 4})),
    DeletePayload(embedding_model_id="alice/m"),
    ScalePayload(embedding_model_id="alice/m", replicas=0),
    ScalePayload(embedding_model_id="alice/m", replicas=16, autoscaler=True),
])
def test_round_trip_through_the_stored_json(payload: TaskPayload) -> None:
    kind = {DeployPayload: TaskKind.deploy, DeletePayload: TaskKind.delete,
            ScalePayload: TaskKind.scale}[type(payload)]
    stored = payload.stored()
    again = read(kind, stored)
    assert again == payload
    assert again.stored() == stored


def test_a_deploy_keeps_only_the_keys_its_caller_gave() -> None:
    """The worker tells a count the caller named from the default (a redeploy keeps the
    count serving unless `replicas` was given), and unknown keys are kept."""
    body = TaskRequest.model_validate(
        {"model_id": "alice/m", "config": {"name": "web", "memory": 512, "foo": "bar"}})
    stored = DeployPayload(embedding_model_id=body.embedding_model_id,
                           config=body.config).stored()
    assert stored == {"embedding_model_id": "alice/m",
                      "config": {"deployment_name": "web", "memory": 512, "foo": "bar"}}
    config = read(TaskKind.deploy, stored)
    assert isinstance(config, DeployPayload)
    assert config.config.replicas is None and config.config.ignored_keys == ["foo"]


# The shapes `tasks.request` was written with before issue 24, each as stored.
OLD_SHAPES: list[tuple[TaskKind, dict[str, Any], TaskPayload]] = [
    # deploy: the body (seed 002, its `id` the idempotency key) and the model reference
    (TaskKind.deploy, {"id": "key-1", "embedding_model_id": "alice/m",
                       "config": {"deployment_name": "web", "replicas": 2,
                                  "env": {"TOKEN": "gAAAAABsealed"}}},
     DeployPayload(embedding_model_id="alice/m", config=DeploymentConfig(
         deployment_name="web", replicas=2, env={"TOKEN": "gAAAAABsealed"}))),
    (TaskKind.deploy, {"embedding_model_id": "alice/m"},
     DeployPayload(embedding_model_id="alice/m")),
    (TaskKind.deploy, {}, DeployPayload()),
    # delete: with the config it was given (none of it acts)
    (TaskKind.delete, {"embedding_model_id": "alice/m", "config": {"replicas": 2}},
     DeletePayload(embedding_model_id="alice/m")),
    (TaskKind.delete, {}, DeletePayload()),
    # the owner's scale: the count in `replicas` and, at least 1, in `config.replicas`
    (TaskKind.scale, {"id": "k", "embedding_model_id": "alice/m",
                      "config": {"replicas": 1}, "replicas": 0},
     ScalePayload(embedding_model_id="alice/m", replicas=0)),
    # the autoscaler's scale
    (TaskKind.scale, {"embedding_model_id": "0b6f", "replicas": 4, "autoscaler": True,
                      "config": {"replicas": 4}},
     ScalePayload(embedding_model_id="0b6f", replicas=4, autoscaler=True)),
    # seed 002's scale body alone: the count only in `config.replicas`
    (TaskKind.scale, {"embedding_model_id": "alice/m", "config": {"replicas": 3}},
     ScalePayload(embedding_model_id="alice/m", replicas=3)),
]


@pytest.mark.parametrize(("kind", "stored", "expected"), OLD_SHAPES)
def test_tasks_stored_before_the_payloads_still_read(kind: TaskKind, stored: dict[str, Any],
                                                     expected: TaskPayload) -> None:
    assert read(kind, stored) == expected


@pytest.mark.parametrize(("kind", "stored"), [
    (TaskKind.scale, {"embedding_model_id": "alice/m"}),  # no count anywhere
    (TaskKind.scale, {"config": {"memory": 512}}),  # nor in the config
    (TaskKind.scale, {"replicas": -1}),
    (TaskKind.scale, {"replicas": 17}),
    (TaskKind.scale, {"replicas": "many"}),
    (TaskKind.scale, {"replicas": 2, "config": "replicas=2"}),
    (TaskKind.scale, {"replicas": 2, "autoscaler": "perhaps"}),
    (TaskKind.scale, {"replicas": 2, "surprise": True}),  # a key no task was stored with
    (TaskKind.deploy, {"config": {"replicas": 0}}),
    (TaskKind.deploy, {"config": {"memory": 1}}),
    (TaskKind.deploy, {"config": []}),
    (TaskKind.deploy, {"replicas": 2}),  # a scale's field on a deploy
    (TaskKind.deploy, {"embedding_model_id": ""}),
    (TaskKind.delete, {"replicas": 2}),
    (TaskKind.delete, {"config": ["x"]}),
])
def test_bad_shapes_are_refused(kind: TaskKind, stored: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        read(kind, stored)


def test_an_unknown_kind_has_no_payload() -> None:
    with pytest.raises(ValueError, match="'restart' has no payload"):
        read("restart", {})


def test_payloads_are_frozen() -> None:
    payload = ScalePayload(replicas=2)
    with pytest.raises(ValidationError):
        payload.replicas = 3


@pytest.mark.parametrize(("kind", "stored", "_"), OLD_SHAPES)
def test_the_answer_reads_the_model_reference_of_every_shape(
        kind: TaskKind, stored: dict[str, Any], _: TaskPayload) -> None:
    """The polling hot path reads only the target; it agrees with the whole payload."""
    assert TaskTarget.model_validate(stored).embedding_model_id == \
        read(kind, stored).embedding_model_id


def test_sealed_env_is_read_even_from_a_row_a_later_rule_refuses() -> None:
    """The log redaction's read (worker/jobs.py): a deploy row whose config no longer
    validates still gives its sealed env values; other kinds and odd shapes give none."""
    stored = {"embedding_model_id": "alice/m",
              "config": {"env": {"PATH": "sealed-1"}, "replicas": 99_999}}
    assert task_payloads.sealed_env("deploy", stored) == {"PATH": "sealed-1"}
    assert task_payloads.sealed_env("scale", {"replicas": 2}) == {}
    assert task_payloads.sealed_env("deploy", {"config": {"env": ["x"]}}) == {}
    assert task_payloads.sealed_env("deploy", {}) == {}
    assert task_payloads.config_env({"env": {"A": "b"}, "unknown": 1}) == {"A": "b"}
    assert task_payloads.config_env({"env": 3}) == {}

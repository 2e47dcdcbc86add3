"""Config keys a task will not act on are named in its answer, never dropped silently."""

import pytest

from schemas.tasks import DeploymentConfig, TaskKind


@pytest.mark.parametrize(("kind", "body", "backend", "unused"), [
    (TaskKind.deploy, {"param": "value"}, "hashing", ["param"]),
    (TaskKind.deploy, {"autoscaling_max": 3, "autoscaling_target_concurrency": 4}, "hashing",
     ["autoscaling_max", "autoscaling_target_concurrency"]),
    (TaskKind.deploy, {"autoscaling_enabled": True, "autoscaling_max": 3}, "hashing", []),
    (TaskKind.deploy, {"autoscaling_min": 2}, "hashing", []),  # it sets the replica count
    (TaskKind.deploy, {"onnx": {"quantize": "int8"}}, "hashing", ["onnx"]),
    (TaskKind.deploy, {"onnx": {"quantize": "int8"}}, "onnx", []),
    (TaskKind.scale, {"replicas": 2, "memory": 512}, None, ["memory"]),
    (TaskKind.delete, {"replicas": 2}, None, ["replicas"]),
    (TaskKind.delete, {}, None, []),
])
def test_unused_keys(kind: TaskKind, body: dict[str, object], backend: str | None,
                     unused: list[str]) -> None:
    assert DeploymentConfig.model_validate(body).unused_keys(kind, backend) == unused


def test_fields_passed_at_their_defaults_are_not_reported() -> None:
    config = DeploymentConfig(memory=None, autoscaling_enabled=False, autoscaling_max=None)
    assert config.unused_keys(TaskKind.deploy, "hashing") == []

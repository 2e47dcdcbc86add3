"""The compatibility gate's decisions (worker/compatibility.py) on the in-memory FakeRuntime,
whose replicas answer /embed with the hashing backend's vectors (or what a test says):
same-space refuses a dimension change or another model and the old generation keeps
serving; new-space flips and says so; a first deploy skips. The same claims on real
replicas (MiniLM, its ONNX export, the hashing backend): tests/e2e/test_compatibility_gate.py.
"""

from typing import Any

import pytest

from db import deployments, events, generations, models
from db.models import Model
from schemas.models import ModelSource
from schemas.tasks import ReplicaState, TaskStatus
from service.domain.registration import register
from tests.worker.decisions import active_generation, deploy, ready_refs, scale, states
from tests.worker.fake_runtime import FakeRuntime, hashing_vectors
from worker import compatibility
from worker.context import WorkerContext
from worker.runtimes.base import ReplicaSpec


async def _model(ctx: WorkerContext, name: str = "gated", dimension: int = 64) -> Model:
    return await register(ctx.pool, "alice", name,
                          ModelSource(backend="hashing", dimension=dimension), "public")


def _gate(task: Any) -> dict[str, Any]:
    record: dict[str, Any] = task.metadata["rollout"]["compatibility"]
    return record


async def _messages(ctx: WorkerContext, task: Any) -> list[str]:
    return [e.message for e in await events.list_for_task(ctx.pool, task.id)]


async def _serving(ctx: WorkerContext) -> tuple[Model, set[str]]:
    """A model whose generation 1 serves; its ready replicas."""
    model = await _model(ctx)
    first = await deploy(ctx, model)
    assert first.status == TaskStatus.done, first.detail
    assert _gate(first) == {"mode": "same-space", "generation": 1, "compared_with": None,
                            "verdict": "skipped",
                            "reason": "no generation is serving: nothing to compare with"}
    return model, await ready_refs(ctx, model.id, 1)


async def _kept_serving(ctx: WorkerContext, fake: FakeRuntime, model: Model,
                        serving: set[str]) -> None:
    assert await active_generation(ctx, model) == 1
    assert await ready_refs(ctx, model.id, 1) == serving
    assert {r.ref for r in fake.running(model.id)} == serving
    assert await states(ctx, model, 2) == [ReplicaState.failed]


def _other_model(spec: ReplicaSpec, texts: list[str]) -> list[list[float]]:
    """Generation 2 answers as another model of the same dimension would."""
    if spec.generation == 1:
        return hashing_vectors(spec, texts)
    return hashing_vectors(spec, [" ".join(w[::-1] for w in t.split()) for t in texts])


async def test_the_same_model_passes_and_records_its_figures(
        fake_ctx: WorkerContext) -> None:
    model, _ = await _serving(fake_ctx)
    task = await deploy(fake_ctx, model)
    assert task.status == TaskStatus.done, task.detail
    gate = _gate(task)
    assert gate["verdict"] == "passed" and gate["comparable"] is True
    assert gate["compared_with"] == 1 and gate["probe"] == {"source": "bundled",
                                                            "sentences": 246}
    figures = gate["figures"]
    assert (figures["dimension_old"], figures["dimension_new"]) == (64, 64)
    assert figures["cosine_mean"] == figures["cosine_min"] == 1.0
    assert figures["neighbour_overlap"] == 1.0 and figures["neighbours"] == 10
    assert figures["norm_mean_old"] == figures["norm_mean_new"] > 0
    assert gate["time_s"] >= gate["timings"]["embed_new_s"] > 0
    assert any(m.startswith("compatibility gate passed against generation 1: dimension 64, "
                            "cosine mean 1.0000") for m in await _messages(fake_ctx, task))


async def test_a_dimension_change_is_refused_and_the_old_generation_keeps_serving(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model, serving = await _serving(fake_ctx)
    await models.update_source(fake_ctx.pool, model.id, {"backend": "hashing", "dimension": 32})
    task = await deploy(fake_ctx, model)
    assert task.status == TaskStatus.failed
    detail = task.detail or ""
    assert detail.startswith("compatibility gate (same-space) refused the flip from "
                             "generation 1 to 2: dimension 64 → 32"), detail
    assert "generation 1 keeps serving" in detail and "new-space" in detail
    gate = _gate(task)
    assert gate["verdict"] == "refused" and gate["shortfalls"][0] == "dimension 64 → 32"
    assert gate["figures"]["cosine_mean"] is None
    await _kept_serving(fake_ctx, fake_runtime, model, serving)
    assert f"generation 2 failed: {detail}" in await _messages(fake_ctx, task)


async def test_another_model_of_the_same_dimension_is_refused(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model, serving = await _serving(fake_ctx)
    fake_runtime.vectors = _other_model
    task = await deploy(fake_ctx, model)
    assert task.status == TaskStatus.failed
    gate = _gate(task)
    assert gate["figures"]["dimension_new"] == 64 and gate["figures"]["cosine_mean"] < 0.5
    assert [s.split(" ")[0:2] for s in gate["shortfalls"]] == [["mean", "cosine"],
                                                               ["top-10", "neighbour"]]
    await _kept_serving(fake_ctx, fake_runtime, model, serving)


async def test_new_space_lets_both_through_and_says_the_vectors_are_not_comparable(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model, _ = await _serving(fake_ctx)
    fake_runtime.vectors = _other_model
    task = await deploy(fake_ctx, model, rollout={"compatibility": "new-space"})
    assert task.status == TaskStatus.done, task.detail
    gate = _gate(task)
    assert gate["verdict"] == "new-space" and gate["comparable"] is False
    assert gate["note"] == ("vectors of generation 2 are not comparable with generation 1's: "
                            "embed again every index built from the old ones")
    assert gate["shortfalls"], "the figures are still measured"
    await models.update_source(fake_ctx.pool, model.id, {"backend": "hashing", "dimension": 32})
    task = await deploy(fake_ctx, model, rollout={"compatibility": "new-space"})
    assert task.status == TaskStatus.done, task.detail
    assert _gate(task)["figures"]["dimension_new"] == 32
    assert await active_generation(fake_ctx, model) == 3
    assert any("not comparable with generation 2's" in m and "new-space" in m
               and "dimension 64 → 32" in m for m in await _messages(fake_ctx, task))


async def test_a_deploys_own_probe_set_is_the_one_embedded(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model, _ = await _serving(fake_ctx)
    seen: list[str] = []

    def recording(spec: ReplicaSpec, texts: list[str]) -> list[list[float]]:
        seen.extend(texts)
        return hashing_vectors(spec, texts)

    fake_runtime.vectors = recording
    probe = [f"probe sentence number {i} about topic {i % 7}" for i in range(40)]
    task = await deploy(fake_ctx, model, rollout={"probe": probe})
    assert task.status == TaskStatus.done, task.detail
    assert _gate(task)["probe"] == {"source": "config", "sentences": 40}
    assert sorted(seen) == sorted(probe * 2), "each generation embeds the probe once"


async def test_a_generation_that_cannot_embed_is_not_flipped_to(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model, serving = await _serving(fake_ctx)

    def broken_new(spec: ReplicaSpec, texts: list[str]) -> list[list[float]]:
        if spec.generation == 2:
            raise RuntimeError("boom")
        return hashing_vectors(spec, texts)

    fake_runtime.vectors = broken_new
    task = await deploy(fake_ctx, model, rollout={"compatibility": "new-space"})
    assert task.status == TaskStatus.failed
    assert (task.detail or "").startswith(
        "generation 2 could not embed the probe set: /embed answered 500"), task.detail
    await _kept_serving(fake_ctx, fake_runtime, model, serving)


async def test_an_answer_that_is_not_finite_numbers_is_no_measurement(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    """NaN compares as passing every floor: a generation that answers it is not flipped to."""
    model, serving = await _serving(fake_ctx)

    def nan_new(spec: ReplicaSpec, texts: list[str]) -> list[list[float]]:
        vectors = hashing_vectors(spec, texts)
        if spec.generation == 2:
            vectors[3][0] = float("nan")
        return vectors

    fake_runtime.vectors = nan_new
    task = await deploy(fake_ctx, model)
    assert task.status == TaskStatus.failed
    assert task.detail == ("generation 2 could not embed the probe set: /embed answered "
                           "values that are not finite numbers")
    await _kept_serving(fake_ctx, fake_runtime, model, serving)


async def test_an_answer_past_the_size_bound_is_no_measurement(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica runs its tenant's code: the worker reads at most MAX_ANSWER_BYTES of it."""
    model, serving = await _serving(fake_ctx)
    monkeypatch.setattr(compatibility, "MAX_ANSWER_BYTES", 4096)
    task = await deploy(fake_ctx, model, rollout={"compatibility": "new-space"})
    assert task.status == TaskStatus.failed
    assert task.detail == ("generation 2 could not embed the probe set: /embed answered more "
                           "than 4096 bytes")
    await _kept_serving(fake_ctx, fake_runtime, model, serving)


async def test_an_unmeasurable_serving_generation_refuses_same_space_only(
        fake_ctx: WorkerContext, fake_runtime: FakeRuntime) -> None:
    model, serving = await _serving(fake_ctx)

    def broken_old(spec: ReplicaSpec, texts: list[str]) -> list[list[float]]:
        if spec.generation == 1:
            raise RuntimeError("boom")
        return hashing_vectors(spec, texts)

    fake_runtime.vectors = broken_old
    task = await deploy(fake_ctx, model)
    assert task.status == TaskStatus.failed
    assert "refused the flip: generation 1 could not embed the probe set" in (task.detail or "")
    await _kept_serving(fake_ctx, fake_runtime, model, serving)
    task = await deploy(fake_ctx, model, rollout={"compatibility": "new-space"})
    assert task.status == TaskStatus.done, task.detail
    gate = _gate(task)
    assert gate["verdict"] == "new-space" and "figures" not in gate
    assert gate["unmeasured"].startswith("generation 1 could not embed the probe set")


async def test_a_generation_scaled_to_zero_skips_the_gate_and_says_so(
        fake_ctx: WorkerContext) -> None:
    model, _ = await _serving(fake_ctx)
    assert (await scale(fake_ctx, model, 0)).status == TaskStatus.done
    task = await deploy(fake_ctx, model)
    assert task.status == TaskStatus.done, task.detail
    gate = _gate(task)
    assert gate["verdict"] == "skipped" and gate["compared_with"] == 1
    assert "compatibility gate skipped: generation 1 has no ready replica (scaled to zero): " \
           "nothing to compare with" in await _messages(fake_ctx, task)


async def test_the_probe_stays_out_of_the_deployments_stored_config(
        fake_ctx: WorkerContext) -> None:
    """Review (Low): every gateway reload reads deployments.config; a deploy's probe (up to
    ~250 KB) stays in its task's request and its generation's pinned config only."""
    model, _ = await _serving(fake_ctx)
    probe = [f"probe sentence number {i} about topic {i % 7}" for i in range(40)]
    task = await deploy(fake_ctx, model, replicas=1, rollout={"probe": probe})
    assert task.status == TaskStatus.done, task.detail
    stored = await deployments.get(fake_ctx.pool, model.id)
    assert stored is not None and stored.active_generation == 2
    assert "probe" not in stored.config["rollout"]
    assert stored.config["rollout"]["strategy"] == "green" and stored.config["replicas"] == 1
    assert task.request["config"]["rollout"]["probe"] == probe
    pinned = await generations.get(fake_ctx.pool, model.id, 2)
    assert pinned is not None and pinned.config["rollout"]["probe"] == probe

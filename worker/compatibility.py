"""The compatibility gate: before any traffic moves, do the two generations' vectors agree?

Between "every new replica is healthy" and the switch (worker/rollout.py), the serving and
the new generation each embed a probe set (the deploy's `config.rollout.probe`, or the
sentences shipped in worker/data/probe_sentences.txt) through their replicas' `/embed`,
with each generation's replica secret as a gateway sends it. The figures
(worker/vector_figures.py) go into the task's `metadata.rollout.compatibility`; then
`config.rollout.compatibility` decides:

- `same-space` (the default): any shortfall (a dimension change, mean cosine under 0.99,
  top-10 neighbour overlap under 0.9) refuses the flip: `Refused` with the figures,
  so the rollout's failure path removes the new replicas, the old generation keeps serving
  and the task fails saying why. A serving generation that cannot embed the probe set
  refuses it too: the gate cannot vouch for what it did not measure.
- `new-space`: the flip goes ahead, and the task and an event say the new vectors are not
  comparable with the old ones (the figures are still measured and recorded; a serving
  generation that cannot embed the probe set is recorded as unmeasured).

A new generation that cannot embed the probe set fails the rollout in either mode: it is
healthy but cannot do its one job.

Nothing to compare with (a first deploy, a redeploy after a delete, or a serving
generation scaled to zero) skips the gate, and the task records why.
"""

import asyncio
import json
import time
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Protocol
from uuid import UUID

import aiohttp
import numpy as np
import structlog

from db import deployments, replicas, tasks
from db.models import Model
from db.tasks import Task
from schemas.rollout import MIN_MEAN_COSINE, MIN_NEIGHBOUR_OVERLAP, RolloutConfig
from schemas.tasks import DeploymentConfig, ReplicaState
from worker import replica_lifecycle, vector_figures
from worker.context import WorkerContext
from worker.runtimes.base import StartedReplica

log = structlog.get_logger(__name__)

# Sentences per /embed request: within the model server's default request budgets
# (max_client_batch_size 256; 32 inputs of 512 tokens is max_request_tokens 16,384).
CHUNK = 32
# How long one generation may take to embed the whole probe set (both embed at once, so
# this bounds the gate; worker/jobs.py's job timeout counts it).
EMBED_TIMEOUT_S = 120.0
# The most one /embed answer may hold: a replica runs its tenant's code, and the worker
# reads its answer into memory (32 vectors of 8,192 floats are about 6 MB of JSON).
MAX_ANSWER_BYTES = 32 * 1024 * 1024


class Refused(Exception):
    """The gate keeps the serving generation; the message, with the figures, becomes the
    task's detail (worker/rollout.py fails the rollout with it, as with RolloutFailed)."""


class ProbeFailed(Exception):
    """A generation's replica did not embed the probe set; the message says why."""

    def __init__(self, message: str, generation: int | None = None) -> None:
        super().__init__(message)
        self.generation = generation


@dataclass(frozen=True)
class Side:
    """One generation as the gate reaches it: its ready replicas and its replica secret."""

    generation: int
    endpoints: list[str]
    headers: dict[str, str]


@dataclass(frozen=True)
class Measurement:
    figures: vector_figures.Figures
    time_s: float
    timings: dict[str, float]


class Progress(Protocol):
    """What the gate needs of the rollout's bookkeeping (worker/rollout.py `Progress`)."""

    task: Task

    async def note(self, **metadata: Any) -> None: ...

    async def event(self, level: str, message: str, generation: int | None = None) -> None: ...


@cache
def bundled_probe() -> tuple[str, ...]:
    """The probe set shipped with the package: one sentence a line."""
    text = resources.files("worker").joinpath("data/probe_sentences.txt").read_text("utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


async def embed_probe(http: aiohttp.ClientSession, endpoint: str, headers: dict[str, str],
                      sentences: list[str]) -> vector_figures.Matrix:
    """The raw (unnormalised) vectors of `sentences` from one replica, in order."""
    rows: list[Any] = []
    try:
        for start in range(0, len(sentences), CHUNK):
            body = {"inputs": sentences[start:start + CHUNK], "normalize": False,
                    "truncate": True}
            async with http.post(f"{endpoint}/embed", json=body, headers=headers) as response:
                raw = await _bounded_body(response)
                if response.status != 200:
                    raise ProbeFailed(f"/embed answered {response.status}: "
                                      f"{raw[:200].decode(errors='replace')}")
                rows += json.loads(raw)
        vectors = np.asarray(rows, dtype=np.float32)
    except (aiohttp.ClientError, ValueError, TypeError) as exc:
        raise ProbeFailed(f"/embed failed: {type(exc).__name__} {exc}") from None
    if vectors.ndim != 2 or len(vectors) != len(sentences):
        raise ProbeFailed(f"/embed answered {len(rows)} vectors for {len(sentences)} inputs")
    if not np.isfinite(vectors).all():  # NaN would compare as passing every floor
        raise ProbeFailed("/embed answered values that are not finite numbers")
    return vectors


async def _bounded_body(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise ProbeFailed(f"/embed answered more than {MAX_ANSWER_BYTES} bytes")
    return bytes(body)


async def _embed_any(http: aiohttp.ClientSession, endpoints: list[str],
                     headers: dict[str, str], sentences: list[str],
                     ) -> tuple[vector_figures.Matrix, float]:
    """The probe's vectors from the first of `endpoints` that answers, and the seconds
    taken; all within EMBED_TIMEOUT_S."""
    reasons = []
    began = time.monotonic()
    try:
        async with asyncio.timeout(EMBED_TIMEOUT_S):
            for endpoint in endpoints:
                try:
                    return (await embed_probe(http, endpoint, headers, sentences),
                            time.monotonic() - began)
                except ProbeFailed as exc:
                    reasons.append(str(exc))
    except TimeoutError:
        reasons.append(f"no answer within {EMBED_TIMEOUT_S:g} s")
    raise ProbeFailed("; ".join(reasons) or "no replica")


async def _serving(ctx: WorkerContext, model_id: UUID, generation: int,
                   ) -> tuple[int | None, list[str]]:
    """The generation serving now (None: none) and its ready replicas' endpoints."""
    deployment = await deployments.get(ctx.pool, model_id)
    old = deployment.active_generation if deployment else None
    if old is None or old == generation:
        return None, []
    return old, [r.endpoint for r in await replicas.list_for_model(ctx.pool, model_id)
                 if r.generation == old and r.state == ReplicaState.ready and r.endpoint]


async def _record(ctx: WorkerContext, progress: Progress, record: dict[str, Any]) -> None:
    """Put the gate's record into `metadata.rollout.compatibility`, beside whatever else
    the rollout wrote under `metadata.rollout` (the merge on the row is one level deep)."""
    task = await tasks.get(ctx.pool, progress.task.id)
    rollout = dict((task.metadata if task else {}).get("rollout") or {})
    await progress.note(rollout={**rollout, "compatibility": record})


async def measure(http: aiohttp.ClientSession, old: Side, new: Side,
                  sentences: list[str]) -> Measurement:
    """Both generations embed `sentences` at once; their figures and the time taken (what
    bench/compatibility_gate.py times). Raises ProbeFailed naming the generation that did
    not answer (the new one first)."""
    began = time.monotonic()
    answers = await asyncio.gather(*(_embed_any(http, side.endpoints, side.headers, sentences)
                                     for side in (old, new)), return_exceptions=True)
    for side, answer in ((new, answers[1]), (old, answers[0])):
        if isinstance(answer, ProbeFailed):
            raise ProbeFailed(f"generation {side.generation} could not embed the probe set: "
                              f"{answer}", side.generation)
        if isinstance(answer, BaseException):
            raise answer
    (old_vectors, old_s), (new_vectors, new_s) = answers  # type: ignore[misc]
    computing = time.monotonic()
    figures = vector_figures.compare(old_vectors, new_vectors)
    done = time.monotonic()
    return Measurement(figures, round(done - began, 3), {
        "embed_old_s": round(old_s, 3), "embed_new_s": round(new_s, 3),
        "figures_s": round(done - computing, 4)})


async def gate(ctx: WorkerContext, progress: Progress, model: Model, generation: int,
               started: list[StartedReplica], config: DeploymentConfig) -> None:
    """Judge `generation` (its replicas `started`, all healthy) against the serving one;
    raises Refused when `same-space` refuses the flip."""
    settings = config.rollout or RolloutConfig()
    record: dict[str, Any] = {"mode": settings.compatibility, "generation": generation}
    old, endpoints = await _serving(ctx, model.id, generation)
    record["compared_with"] = old
    if old is None or not endpoints:
        await _skip(ctx, progress, record, (
            "no generation is serving: nothing to compare with" if old is None else
            f"generation {old} has no ready replica (scaled to zero): nothing to compare with"))
        return
    sentences = list(settings.probe or bundled_probe())
    record["probe"] = {"source": "config" if settings.probe else "bundled",
                       "sentences": len(sentences)}
    began = time.monotonic()
    try:
        measured = await measure(
            ctx.http, Side(old, endpoints, replica_lifecycle.gateway_headers(ctx, model.id, old)),
            Side(generation, [r.endpoint for r in started],
                 replica_lifecycle.gateway_headers(ctx, model.id, generation)), sentences)
    except ProbeFailed as exc:
        if exc.generation == generation:
            raise Refused(str(exc)) from None
        if settings.compatibility == "same-space":
            raise Refused(f"compatibility gate (same-space) refused the flip: {exc}; "
                          f"generation {old} keeps serving") from None
        record |= {"unmeasured": str(exc), "time_s": round(time.monotonic() - began, 3)}
        await _decide(ctx, progress, record, None)
        return
    record |= {"time_s": measured.time_s, "timings": measured.timings}
    await _decide(ctx, progress, record, measured.figures)


async def _skip(ctx: WorkerContext, progress: Progress, record: dict[str, Any],
                reason: str) -> None:
    await _record(ctx, progress, record | {"verdict": "skipped", "reason": reason})
    if record["compared_with"] is not None:  # a redeploy went unjudged: say so
        await progress.event("warning", f"compatibility gate skipped: {reason}",
                             record["generation"])


async def _decide(ctx: WorkerContext, progress: Progress, record: dict[str, Any],
                  figures: vector_figures.Figures | None) -> None:
    """Record the verdict; raise Refused for a same-space shortfall. `figures` is None
    only for new-space when the serving generation could not be measured."""
    old, generation = record["compared_with"], record["generation"]
    shortfalls = vector_figures.shortfalls(figures) if figures else []
    summary = vector_figures.summary(figures) if figures else record["unmeasured"]
    if figures is not None:
        record |= {"figures": figures.as_json(), "shortfalls": shortfalls,
                   "thresholds": {"min_mean_cosine": MIN_MEAN_COSINE,
                                  "min_neighbour_overlap": MIN_NEIGHBOUR_OVERLAP}}
    if record["mode"] == "new-space":
        record |= {"verdict": "new-space", "comparable": False, "note": (
            f"vectors of generation {generation} are not comparable with generation {old}'s: "
            "embed again every index built from the old ones")}
    else:
        record |= {"verdict": "refused" if shortfalls else "passed",
                   "comparable": not shortfalls}
    await _record(ctx, progress, record)
    log.info("compatibility_gate", generation=generation, old=old, verdict=record["verdict"],
             figures=record.get("figures"), time_s=record["time_s"])
    if record["verdict"] == "new-space":
        await progress.event("warning", f"{record['note']} (config.rollout.compatibility "
                             f"new-space; {summary})", generation)
    elif shortfalls:
        raise Refused(
            f"compatibility gate (same-space) refused the flip from generation {old} to "
            f"{generation}: {'; '.join(shortfalls)} ({summary}); generation {old} keeps "
            "serving. Deploy with config.rollout.compatibility \"new-space\" if the new "
            "vectors are meant to replace the old ones (every index must be embedded again)")
    else:
        await progress.event("info", f"compatibility gate passed against generation {old}: "
                             f"{summary} ({record['time_s']:g} s)", generation)

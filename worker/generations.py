"""A generation pins the revision and the config it starts from (issue 26).

`pin` records, when a rollout allocates a generation, which revision of the model it runs
(by default the revision of the model's current source, recorded now if a change of
source made none) and its config. Every replica start of that generation, whoever starts
it (rollout, repair, scale, autoscaler, the restore after `up`), loads the pinned
revision's source (`pinned_model`), never the model's current one.
"""

import dataclasses

from db import generations, revisions
from db.models import Model
from db.revisions import Revision
from schemas.revisions import source_digest
from schemas.tasks import DeploymentConfig
from worker.context import WorkerContext


async def pin(ctx: WorkerContext, model: Model, generation: int, config: DeploymentConfig,
              revision: int | None = None, rollback_of: int | None = None) -> Revision:
    """Pin `generation` to `revision` (None: the model's current source) and `config`."""
    if revision is None:
        pinned = await revisions.for_source(ctx.pool, model.id, model.source,
                                            source_digest(model.source))
    else:
        found = await revisions.get(ctx.pool, model.id, revision)
        assert found is not None, "a generation's pinned revision is never deleted"
        pinned = found
    await generations.pin(ctx.pool, model.id, generation, pinned.number,
                          config.model_dump(mode="json"), rollback_of)
    return pinned


async def pinned_model(ctx: WorkerContext, model: Model, generation: int) -> Model:
    """`model` as generation `generation` runs it: with its pinned revision's source (a
    generation from before revisions runs the model's current source)."""
    source = await generations.pinned_source(ctx.pool, model.id, generation)
    if source is None or source == model.source:
        return model
    return dataclasses.replace(model, source=source)

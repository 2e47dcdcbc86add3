"""`config.rollout`: how a deploy moves traffic and what it keeps for a rollback (issue 26).
Other rollout keys join this object; every key is optional, so the seeds' deploys are
unchanged."""

from pydantic import BaseModel, ConfigDict, Field

KEEP_PREVIOUS_S_DEFAULT = 300.0


class RolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_previous_s: float = Field(
        default=KEEP_PREVIOUS_S_DEFAULT, ge=0, le=86_400,
        description="after a flip, the previous generation's replicas stay warm (running, "
                    "not routed) this long: a rollback inside it is a route flip; they count "
                    "toward quotas and capacity meanwhile; 0 drains them at once")


def keep_previous_s(rollout: RolloutConfig | None) -> float:
    return rollout.keep_previous_s if rollout is not None else KEEP_PREVIOUS_S_DEFAULT


class RollbackRequest(BaseModel):
    """POST /api/v2/deploy/{model}/rollback; the body is optional."""

    model_config = ConfigDict(extra="forbid")

    generation: int | None = Field(
        default=None, ge=1, description="the generation to go back to; default: the one "
                                        "that served before the serving one")

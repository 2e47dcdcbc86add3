"""`config.rollout`: how a deploy moves traffic and what it keeps for a rollback (issue 26).
Other rollout keys join this object; every key is optional, so the seeds' deploys are
unchanged."""

from pydantic import BaseModel, ConfigDict, Field


class RolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_previous_s: float | None = Field(
        default=None, ge=0, le=86_400,
        description="after a flip, the previous generation's replicas stay warm (running, "
                    "not routed) this long: a rollback inside it is a route flip; they count "
                    "toward quotas and capacity meanwhile; 0 drains them at once (default: "
                    "GREENROOM_ROLLOUT_KEEP_PREVIOUS_S, 300)")


def keep_previous_s(rollout: RolloutConfig | None, default: float) -> float:
    """The warm window of a deploy with `rollout`; `default`: the installation's setting."""
    if rollout is None or rollout.keep_previous_s is None:
        return default
    return rollout.keep_previous_s


class RollbackRequest(BaseModel):
    """POST /api/v2/deploy/{model}/rollback; the body is optional."""

    model_config = ConfigDict(extra="forbid")

    generation: int | None = Field(
        default=None, ge=1, le=2**31 - 1,
        description="the generation to go back to; default: the one that served before "
                    "the serving one")

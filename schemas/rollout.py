"""`config.rollout`: how a deploy judges its new generation before traffic moves to it.

The compatibility gate (worker/compatibility.py) has the serving and the new generation
embed a probe set and compares their vectors. `same-space`, the default, keeps the old
generation serving when the new vectors are not interchangeable with the old ones;
`new-space` flips anyway and says that every index built from the old vectors must be
embedded again.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# The same-space floors, fixed by issue 26 (clients and scripts count on them).
MIN_MEAN_COSINE = 0.99
MIN_NEIGHBOUR_OVERLAP = 0.9
NEIGHBOURS = 10
# A deploy's own probe set: enough sentences for ten neighbours each to mean something,
# and bounded so a body stays small (each is embedded twice, by both generations).
MIN_PROBE_SENTENCES = 20
MAX_PROBE_SENTENCES = 500
MAX_PROBE_CHARS = 500

Compatibility = Literal["same-space", "new-space"]
ProbeSentence = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROBE_CHARS,
                                                 pattern=r"\S")]


class RolloutConfig(BaseModel):
    """`config.rollout` of a deploy; every field optional."""

    model_config = ConfigDict(extra="forbid")

    compatibility: Compatibility = Field(
        default="same-space",
        description="same-space: refuse the flip when the new generation's vectors differ "
                    f"from the serving one's (dimension, mean cosine < {MIN_MEAN_COSINE}, "
                    f"top-{NEIGHBOURS} neighbour overlap < {MIN_NEIGHBOUR_OVERLAP}); "
                    "new-space: flip, recording that the vectors are not comparable")
    probe: list[ProbeSentence] | None = Field(
        default=None, min_length=MIN_PROBE_SENTENCES, max_length=MAX_PROBE_SENTENCES,
        description="sentences both generations embed (default: the bundled probe set)")

"""Model revisions and generations as the API shows them (issue 26)."""

import hashlib
import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.models import ModelSource


def source_digest(source: dict[str, Any]) -> str:
    """A revision made by a change of source (no files of its own): the digest of the
    source's canonical JSON."""
    canonical = json.dumps(source, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


class RevisionOut(BaseModel):
    """One immutable revision of a model: what an upload or a change of source made."""

    id: str = Field(description="the revision's id, `r<number>`", examples=["r2"])
    number: int
    created: datetime
    origin: Literal["upload", "source"] = Field(
        description="upload: an uploaded archive's files, kept at <store>/<model>/<number>/; "
                    "source: a change of the model's source")
    digest: str = Field(description="sha256 of the revision's files (an upload) or of its "
                                    "source's canonical JSON")
    size_bytes: int = Field(description="the files' total size (0 for a change of source)")
    source: dict[str, Any] = Field(description="what a replica of a generation pinned to "
                                               "this revision loads")
    files_removed: bool = Field(
        default=False, description="true once no live generation or rollback target uses "
                                   "the revision and its files were removed")


class PinnedGeneration(BaseModel):
    """A generation of a deployment: the revision and the config it pinned."""

    generation: int
    revision: str = Field(description="the pinned revision's id")
    digest: str
    created: datetime
    served_at: datetime | None = None
    rollback_of: int | None = Field(
        default=None, description="the generation whose revision and config this one "
                                  "repeats (a rollback after the warm window)")
    state: Literal["serving", "warm", "retired", "never_served"] = "retired"
    config: dict[str, Any] = Field(default_factory=dict)


class ModelUpdate(BaseModel):
    """PATCH /api/v2/models/{model}: a new source makes a new revision."""

    model_config = ConfigDict(extra="forbid")

    source: ModelSource | None = None

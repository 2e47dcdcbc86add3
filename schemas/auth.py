"""Accounts, principals and permissions: shapes shared by the service and the CLI."""

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Permission(IntEnum):
    """none < read < write < owner."""

    none = 0
    read = 1
    write = 2
    owner = 3

    @classmethod
    def parse(cls, name: str) -> "Permission":
        return cls[name]


PrincipalKind = Literal["anonymous", "user", "job", "update"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: resolved from the bearer token once per request."""

    kind: PrincipalKind
    user_id: int | None = None
    username: str | None = None
    is_admin: bool = False
    model_id: UUID | None = None
    generation: int | None = None
    expires_at: datetime | None = None
    via: Literal["jwt", "api_key", "none"] = "none"

    @property
    def is_user(self) -> bool:
        return self.kind == "user"


ANONYMOUS = Principal(kind="anonymous")


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(pattern=USERNAME_PATTERN)
    password: str = Field(min_length=8, max_length=256)
    email: str | None = Field(default=None, max_length=320)
    is_admin: bool = False


class UserOut(BaseModel):
    id: int
    username: str
    email: str | None
    is_admin: bool
    created_at: datetime
    # A disabled user cannot log in; their tokens and API keys are refused.
    disabled: bool = False


class PasswordChange(BaseModel):
    """The caller's current password and the new one; every older token of theirs dies."""

    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=8, max_length=256)


class UserStatus(BaseModel):
    """Disable a user (no login; their tokens and API keys stop working) or enable them."""

    model_config = ConfigDict(extra="forbid")

    disabled: bool


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class LoginResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime
    user: UserOut


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    expires_at: datetime | None = None
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)
    # Issue 29: the key's lane on the data plane (a batch-lane key cannot raise a request
    # to interactive), and its rate limits per model it calls (None: the gateway's default).
    lane: Literal["interactive", "batch"] = "interactive"
    requests_per_s: float | None = Field(default=None, gt=0, le=1_000_000)
    tokens_per_s: float | None = Field(default=None, gt=0, le=1_000_000_000)


class ApiKeyOut(BaseModel):
    id: int
    name: str
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime
    lane: Literal["interactive", "batch"] = "interactive"
    requests_per_s: float | None = None
    tokens_per_s: float | None = None


class ApiKeyCreated(ApiKeyOut):
    """The one response that carries the key itself."""

    key: str


class GrantRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(pattern=USERNAME_PATTERN)
    permission: Literal["read", "write", "owner"]
    expires_at: datetime | None = None


class GrantOut(BaseModel):
    model_id: UUID
    username: str
    permission: str
    expires_at: datetime | None


class ModelOut(BaseModel):
    id: UUID
    identifier: str
    owner: str
    name: str
    source: dict[str, Any]
    train_status: str
    access_level: str
    default_permission: str
    parent_id: UUID | None
    dependencies: list[str]
    metadata: dict[str, Any]
    created_at: datetime

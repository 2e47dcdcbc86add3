"""The access rule of a route: who may call it, where its model comes from, and the
permission the caller needs on that model.

Each route's `RouteSpec` (edge/route_spec.py) names one `Access`; the guard
(edge/guard.py) reads its three fields and branches on nothing else, so a new kind
of route is a new `Access` here. `name` is the word the OpenAPI document and the
authorisation-matrix test use for the rule.
"""

from dataclasses import dataclass
from enum import StrEnum

from schemas.auth import Permission


class Caller(StrEnum):
    """Who may call."""

    anyone = "anyone"  # no token is looked at
    lenient = "lenient"  # a token is read; a bad one counts as none (seed 000's no-throw check)
    token_if_any = "token_if_any"  # none is fine (the model decides), a bad one is 401
    signed_in = "signed_in"  # any valid token: a user's, a job's or an update token
    user = "user"  # a user's token or API key
    admin = "admin"  # an administrator's
    job = "job"  # a live job token of a deployment generation
    update = "update"  # an update token


class ModelFrom(StrEnum):
    """Where the model the route acts on comes from."""

    nowhere = "nowhere"  # the route acts on no model
    request = "request"  # the route's locator reads it from the path, query or body
    token = "token"  # the caller's job or update token names it
    serving = "serving"  # the gateway's route for the deployment the request names


@dataclass(frozen=True, slots=True)
class Access:
    """One route's access rule."""

    name: str
    caller: Caller
    model: ModelFrom = ModelFrom.nowhere
    # Needed on the model; a job caller acts only on its own model, with read.
    permission: Permission = Permission.none


PUBLIC = Access("public", Caller.anyone)
OPTIONAL = Access("optional", Caller.lenient)
# The caller's own permissions on a model the request names (a bad token counts as none).
OPTIONAL_ON_MODEL = Access("optional", Caller.lenient, ModelFrom.request)
USER = Access("user", Caller.user)
ADMIN = Access("admin", Caller.admin)
READ = Access("read", Caller.signed_in, ModelFrom.request, Permission.read)
WRITE = Access("write", Caller.signed_in, ModelFrom.request, Permission.write)
OWNER = Access("owner", Caller.signed_in, ModelFrom.request, Permission.owner)
# A job token acting on its own model (the token's)...
JOB = Access("job", Caller.job, ModelFrom.token, Permission.read)
# ...or on the model in the path, which must be the token's.
JOB_MODEL = Access("job_model", Caller.job, ModelFrom.request, Permission.read)
UPDATE = Access("update", Caller.update, ModelFrom.token, Permission.read)
# Public models need no token; others need read access (checked only if serving).
INFERENCE = Access("inference", Caller.token_if_any, ModelFrom.serving, Permission.read)
# A user (token or API key, never a job's) with read access to the model in the request:
# a bulk embedding job is a user's, run on a model they may query (issue 30).
USER_READ = Access("user_read", Caller.user, ModelFrom.request, Permission.read)
# A user acting on a thing of their own (an embed job): another user's answers as missing.
OWN = Access("own", Caller.user)

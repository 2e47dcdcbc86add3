"""Replica logs as a model's readers see them: its secret values and any token taken out.

Seeds 000 and 001 let anyone who may read a model read its deployment's logs, and a
model's code may print what its environment holds (review M9). So the worker, which alone
can decrypt a deployment's secrets, replaces each of their values, each `env` value long
enough to be one (of the deployment's config and of the tasks that started its live
replicas: a generation still starting runs with its task's env), each live generation's
gateway secret
(schemas/replica_auth.py) and every JWT (a replica's job token) with `[redacted]` before
the lines leave it.
"""

import re
from collections.abc import Iterable

REDACTED = "[redacted]"
# A secret shorter than this is not looked for (it would take out ordinary words and numbers).
MIN_SECRET_CHARS = 4
# Config env values are settings as often as secrets: only the longer ones are taken out.
MIN_ENV_VALUE_CHARS = 8
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` without any of `secrets` (the longest first, so one inside another goes too)
    and without JWTs."""
    for value in sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len,
                        reverse=True):
        text = text.replace(value, REDACTED)
    return JWT.sub(REDACTED, text)


def secret_values(secrets: dict[str, str], env_values: Iterable[str]) -> list[str]:
    """What to take out of a deployment's logs: every secret, and the longer env values."""
    return [*secrets.values(), *(v for v in env_values if len(v) >= MIN_ENV_VALUE_CHARS)]

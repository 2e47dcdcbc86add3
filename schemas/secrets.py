"""Deployment secrets (genai_key and the like) encrypted at rest with Fernet.

The key is derived from GREENROOM_SECRET_KEY; the API encrypts, the worker decrypts
when it builds a replica's environment. Plain values never reach a log or a response.
"""

import base64
import json

from cryptography.fernet import Fernet, InvalidToken

from schemas.tokens import derive_key

# Secret name in a request → environment variable in the replica.
ENV_NAMES = {"genai_key": "GENAI_KEY"}


class SecretsUnreadable(Exception):
    """The stored blob was written with another secret key, or is damaged."""


def _fernet(secret: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(derive_key(secret, "secrets")))


def encrypt(secret: str, values: dict[str, str]) -> bytes:
    return _fernet(secret).encrypt(json.dumps(values).encode())


def decrypt(secret: str, blob: bytes) -> dict[str, str]:
    try:
        values: dict[str, str] = json.loads(_fernet(secret).decrypt(blob))
    except (InvalidToken, ValueError) as exc:
        raise SecretsUnreadable("stored secrets cannot be decrypted") from exc
    return values


# A deployment env value sealed at rest (review L5): the task's request and the deployment's
# config hold this prefix and a Fernet token, never the value; the worker opens it when it
# builds a replica's environment.
SEALED_PREFIX = "fernet:"


def seal_env(secret: str, env: dict[str, str]) -> dict[str, str]:
    """Each value encrypted (names stay readable: the console lists them); a value that
    happens to start with the prefix is sealed too, so it opens as itself."""
    fernet = _fernet(secret)
    return {name: SEALED_PREFIX + fernet.encrypt(value.encode()).decode()
            for name, value in env.items()}


def open_env(secret: str, env: dict[str, str]) -> dict[str, str]:
    """The values `seal_env` sealed, decrypted; a value stored before sealing passes as is."""
    fernet = _fernet(secret)
    try:
        return {name: fernet.decrypt(value[len(SEALED_PREFIX):].encode()).decode()
                if value.startswith(SEALED_PREFIX) else value for name, value in env.items()}
    except (InvalidToken, ValueError) as exc:
        raise SecretsUnreadable("the deployment's env cannot be decrypted") from exc


def as_env(values: dict[str, str]) -> dict[str, str]:
    """The replica environment for decrypted secrets: known names mapped, others upper-cased."""
    return {ENV_NAMES.get(k, k.upper()): v for k, v in values.items()}

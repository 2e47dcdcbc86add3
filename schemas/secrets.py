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


def as_env(values: dict[str, str]) -> dict[str, str]:
    """The replica environment for decrypted secrets: known names mapped, others upper-cased."""
    return {ENV_NAMES.get(k, k.upper()): v for k, v in values.items()}

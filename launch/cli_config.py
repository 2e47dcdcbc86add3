"""Where the CLI finds the API and its token: variables first, then this folder's stack."""

import os
from pathlib import Path

from launch import stack_state
from schemas.settings import Settings


def api_url(settings: Settings) -> str:
    """GREENROOM_API_URL, else the API of the stack `up` runs in this folder, else api_host:port."""
    if os.environ.get("GREENROOM_API_URL"):
        return os.environ["GREENROOM_API_URL"].rstrip("/")
    stack = stack_state.load_stack(settings.state_dir)
    if stack is not None:
        return stack.api_url
    return f"http://{settings.api_host}:{settings.api_port}"


def gateway_url(settings: Settings) -> str:
    """GREENROOM_GATEWAY_URL, else the gateway of the stack in this folder, else
    gateway_host:gateway_port."""
    if os.environ.get("GREENROOM_GATEWAY_URL"):
        return os.environ["GREENROOM_GATEWAY_URL"].rstrip("/")
    stack = stack_state.load_stack(settings.state_dir)
    if stack is not None and stack.gateway_url:
        return stack.gateway_url
    return f"http://{settings.gateway_host}:{settings.gateway_port}"


def token_path(settings: Settings) -> Path:
    return settings.state_dir / stack_state.TOKEN_FILE


def token(settings: Settings) -> str | None:
    """GREENROOM_TOKEN, else the token `greenroom login` saved."""
    if os.environ.get("GREENROOM_TOKEN"):
        return os.environ["GREENROOM_TOKEN"]
    try:
        return token_path(settings).read_text().strip() or None
    except OSError:
        return None


def save_token(settings: Settings, value: str) -> Path:
    path = token_path(settings)
    stack_state.write_private(path, value + "\n")
    return path

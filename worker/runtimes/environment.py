"""A replica's environment, built from an allowlist (never the worker's own environment).

A replica runs whatever code its model brings, so it must hold nothing that reaches the
control plane: no GREENROOM_SECRET_KEY (it signs every token), no database or Redis URL,
no other GREENROOM_* setting. What it gets: the MODEL_SERVER_* settings, its job token,
model id and replica id, the deployment's own env and decrypted secrets, and (process
runtime only) the few host variables a Python process needs to run.
"""

import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from schemas.replica_env import REPLICA_NAMES, bad_value, reserved

# Host variables a local model-server process needs (interpreter, locale, thread counts).
HOST_PASSTHROUGH = (
    "PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "VIRTUAL_ENV", "LD_LIBRARY_PATH",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM",
    "CUDA_VISIBLE_DEVICES",
)
# Set for every replica: nothing is ever fetched from a hub at run time.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def allowed(name: str, value: str = "") -> bool:
    """May this variable, from the deployment's env, reach a replica? (The API refuses
    reserved names with a 422; this drops any a stored deployment still holds.)"""
    return (name in REPLICA_NAMES or reserved(name) is None) and bad_value(value) is None


def replica_env(server_env: Mapping[str, str], deployment_env: Mapping[str, str]) -> dict[str, str]:
    """What every runtime gives a replica: the deployment's env (reserved names dropped,
    whoever put them there) under the MODEL_SERVER_* settings and the offline flags; a
    runtime puts its host variables over this too (the deployment's env never wins)."""
    env = {k: v for k, v in deployment_env.items() if allowed(k, v)}
    return {**env, **OFFLINE, **server_env}


def _python_path() -> str | None:
    """The folder holding `model_server` if it was found through sys.path (a source
    checkout run from its root or through PYTHONPATH); None when an installed or editable
    package finds it in any interpreter of this environment."""
    spec = importlib.util.find_spec("model_server")
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).resolve().parent.parent
    on_path = {Path(p or os.getcwd()).resolve() for p in sys.path}
    return str(root) if root in on_path else None


def host_env(home: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The host variables a local replica process keeps; HOME is its own folder."""
    environ = os.environ if environ is None else environ
    env = {k: environ[k] for k in HOST_PASSTHROUGH if k in environ}
    env["HOME"] = str(home)
    python_path = _python_path()
    if python_path is not None:
        env["PYTHONPATH"] = python_path
    return env

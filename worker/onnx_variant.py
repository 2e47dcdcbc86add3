"""What a replica of an `onnx`-backend model is told, and what it reports back.

The deployment's `config.onnx` and the model's folder under the store's `exports/` travel in the
replica's source (not its env, which carries the caller's variables) and become
MODEL_SERVER_* settings in `model_server_env`. Once the replicas are healthy, the
agreement the server measured (or read from its record) is copied into the model's
metadata in the registry.
"""

from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import structlog

from db import models
from schemas.file_modes import private_dir
from schemas.settings import Settings
from schemas.tasks import DeploymentConfig, OnnxOptions

log = structlog.get_logger(__name__)

ONNX_BACKEND = "onnx"
INFO_TIMEOUT_S = 5.0
_ENV_NAMES = {
    "quantize": "MODEL_SERVER_ONNX_QUANTIZE",
    "optimization_level": "MODEL_SERVER_ONNX_OPTIMIZATION_LEVEL",
    "isa": "MODEL_SERVER_ONNX_ISA",
    "min_mean_cosine": "MODEL_SERVER_ONNX_MIN_MEAN_COSINE",
    "min_top1_agreement": "MODEL_SERVER_ONNX_MIN_TOP1_AGREEMENT",
}


def export_dir(settings: Settings, model_id: UUID) -> Path:
    """`<model store>/exports/<model id>`, absolute (replicas run in another directory or
    container): one cache per model, so a replica, which may write its own model's cache,
    never reaches another tenant's exports or agreement records."""
    return (settings.model_store_dir / "exports" / str(model_id)).resolve()


def replica_source(settings: Settings, source: dict[str, Any],
                   config: DeploymentConfig, model_id: UUID) -> dict[str, Any]:
    """The model's source, plus its export cache and the deployment's ONNX options."""
    if source.get("backend") != ONNX_BACKEND:
        return source
    exports = export_dir(settings, model_id)
    private_dir(settings.model_store_dir.resolve())  # the store's root: its owner's alone
    exports.mkdir(parents=True, exist_ok=True)
    options = (config.onnx or OnnxOptions()).model_dump(exclude_none=True)
    return {**source, "export_dir": str(exports), "onnx": options}


def onnx_env(source: dict[str, Any]) -> dict[str, str]:
    """MODEL_SERVER_* settings for the options `replica_source` added."""
    env = {_ENV_NAMES[key]: str(value) for key, value in (source.get("onnx") or {}).items()
           if key in _ENV_NAMES}
    if source.get("export_dir"):
        env["MODEL_SERVER_EXPORT_DIR"] = str(source["export_dir"])
    if source.get("export_entry"):  # prepared by the worker (worker/auto_backend.py)
        env["MODEL_SERVER_EXPORT_ENTRY"] = str(source["export_entry"])
    return env


async def record_agreement(pool: Any, http: aiohttp.ClientSession, model_id: Any,
                           source: dict[str, Any], endpoint: str, generation: int,
                           headers: dict[str, str] | None = None) -> None:
    """Copy a healthy onnx replica's variant and agreement into the model's metadata
    (`headers`: the generation's replica secret, as a gateway sends it)."""
    if source.get("backend") != ONNX_BACKEND:
        return
    try:
        timeout = aiohttp.ClientTimeout(total=INFO_TIMEOUT_S)
        async with http.get(f"{endpoint}/info", timeout=timeout, headers=headers) as response:
            info = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("onnx_info_unreadable", endpoint=endpoint, error=str(exc))
        return
    await models.merge_metadata(pool, model_id, {"onnx": {
        "quantization": info.get("quantization"), "agreement": info.get("agreement"),
        "generation": generation,
    }})

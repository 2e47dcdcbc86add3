"""Which names a deployment's `env` may not set, and why (shared by the API and workers).

A replica runs a model's code beside the worker's; its environment must not reach the
control plane (GREENROOM_*), point the server at another model than its source names
(MODEL_SERVER_MODEL and friends), or make the interpreter load code from elsewhere (LD_*,
PYTHON*: LD_PRELOAD, PYTHONPATH, PYTHONWARNINGS can each import a file of the user's).
"""

# The only GREENROOM_* names a replica holds, all set by the worker; none is a setting.
REPLICA_NAMES = frozenset({"GREENROOM_JOB_TOKEN", "GREENROOM_MODEL_ID", "GREENROOM_REPLICA_ID"})
SERVER_CONTROLLED = frozenset({"MODEL_SERVER_MODEL", "MODEL_SERVER_BACKEND", "MODEL_SERVER_HOST",
                               "MODEL_SERVER_PORT", "MODEL_SERVER_MODEL_ID"})
CODE_LOADING_PREFIXES = ("LD_", "PYTHON")


def reserved(name: str) -> str | None:
    """Why a deployment may not set `name`, or None if it may."""
    if name.startswith("GREENROOM_"):
        return "GREENROOM_* names belong to the control plane"
    if name in SERVER_CONTROLLED:
        return "set by the worker from the model's source"
    if name.upper().startswith(CODE_LOADING_PREFIXES):
        return "would let the replica load code from outside its model server"
    return None

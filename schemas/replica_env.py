"""Which names a deployment's `env` may not set, and why (shared by the API and workers).

A replica runs a model's code beside the worker's; its environment must not reach the
control plane (GREENROOM_*), steer the model server (every MODEL_SERVER_* setting is the
worker's, from the model's source: MODEL_SERVER_MODEL could name another user's weights,
MODEL_SERVER_EXPORT_DIR another tenant's cache), replace what the host gives the process
(PATH, HOME, ...), or make the interpreter or a library it loads run code from elsewhere
(LD_*, PYTHON*, GCONV_PATH, OMP_TOOL*, BROWSER: PYTHONWARNINGS with BROWSER runs a
command at interpreter start). A name must also be a plain identifier: '=' or NUL in
a name (or NUL in a value) cannot reach a process environment at all.
"""

import re
from typing import Any

from schemas import replica_auth

# The only reserved names a replica holds beside its MODEL_SERVER_* settings, all set by the
# worker (a deployment's env cannot: the API refuses reserved names): its job token, ids,
# and its generation's gateway secret (schemas/replica_auth.py).
REPLICA_NAMES = frozenset({"GREENROOM_JOB_TOKEN", "GREENROOM_MODEL_ID", "GREENROOM_REPLICA_ID",
                           replica_auth.ENV})
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Set by the host or the runtime for the process (a deployment may not replace them).
HOST_CONTROLLED = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "TMPDIR", "VIRTUAL_ENV",
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
})
# Names that make a loader, an interpreter, a shell or a library load or run other code.
CODE_LOADING = frozenset({
    "GCONV_PATH", "BROWSER", "IFS", "ENV", "BASH_ENV", "PERLLIB", "NODE_OPTIONS", "NODE_PATH",
    "GLIBC_TUNABLES", "LOCPATH", "NLSPATH", "HOSTALIASES", "RESOLV_HOST_CONF", "EDITOR",
    "VISUAL", "PAGER", "GIT_EXEC_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "OPENSSL_CONF",
    "OPENSSL_ENGINES", "KRB5_CONFIG", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME",
})
CODE_LOADING_PREFIXES = ("LD_", "PYTHON", "OMP_TOOL", "MALLOC_", "PERL5", "RUBY", "BASH_FUNC_",
                         "DYLD_", "HF_", "TRANSFORMERS_", "TORCH", "TRITON_", "NUMBA_", "KMP_",
                         "SENTENCE_TRANSFORMERS_", "ORT_", "CUDA_CACHE", "GIT_")


def reserved(name: str) -> str | None:
    """Why a deployment may not set `name`, or None if it may."""
    if not NAME.fullmatch(name):
        return "not a variable name (letters, digits and _, not starting with a digit)"
    upper = name.upper()
    if upper.startswith("GREENROOM_"):
        return "GREENROOM_* names belong to the control plane"
    if upper.startswith("MODEL_SERVER_"):
        return "MODEL_SERVER_* settings are set by the worker from the model's source"
    if upper in HOST_CONTROLLED:
        return "set by the host for the replica process"
    if upper in CODE_LOADING or upper.startswith(CODE_LOADING_PREFIXES):
        return "would let the replica load code from outside its model server"
    return None


def bad_value(value: str) -> str | None:
    """Why a value cannot reach a process environment, or None if it can."""
    return "holds a NUL character" if "\0" in value else None


def _any_case(text: str) -> str:
    """`text` as an ECMA-262 pattern that matches it in any case (JSON Schema has no flags)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in text)


# `reserved` as a JSON Schema for a deployment's env names (the document's propertyNames):
# a variable name, and none of the reserved names or prefixes, in any case.
NAME_SCHEMA: dict[str, Any] = {
    "pattern": f"^{NAME.pattern}$",
    "not": {"pattern": "^(?:" + "|".join(
        [_any_case(p) for p in ("GREENROOM_", "MODEL_SERVER_", *CODE_LOADING_PREFIXES)]
        + [_any_case(n) + "$" for n in sorted(HOST_CONTROLLED | CODE_LOADING)]) + ")"},
}

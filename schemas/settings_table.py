"""The table of settings in docs/operations.md, generated from the Settings class so it
cannot go stale.

`python -m schemas.settings_table` rewrites the table between the page's markers;
`tests/schemas/test_settings_table.py` fails when the page's copy differs from this output.
Descriptions are the comment lines above each field in schemas/settings.py.
"""

import ast
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from schemas.settings import Settings

START, END = "<!-- settings:start -->", "<!-- settings:end -->"
SOURCE = Path(__file__).resolve().parent / "settings.py"
OPERATIONS = SOURCE.parents[1] / "docs" / "operations.md"


def _fields_in_source() -> dict[str, tuple[str, str]]:
    """field → (annotation, the comment above it), read from the class body."""
    lines = SOURCE.read_text().splitlines()
    tree = ast.parse(SOURCE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    found = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comment: list[str] = []
            row = node.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#"):
                comment.insert(0, lines[row].strip().lstrip("#").strip())
                row -= 1
            found[node.target.id] = (ast.unparse(node.annotation), " ".join(comment))
    return found


# For fields whose line in settings.py has no comment above it (a comment there wins).
_DESCRIPTIONS = {
    "database_url": "Postgres DSN; `greenroom up` runs an embedded one when unset.",
    "redis_url": "Redis URL; `greenroom up` runs an embedded one when unset.",
    "secret_key": "Signs tokens and encrypts deployment secrets; `up` draws one into "
                  "`.greenroom/secret_key` once.",
    "runtime": "Where replicas run: `process`, `docker` or `swarm`.",
    "state_dir": "`up`'s state (keys, embedded databases, stack file, logs) and process "
                 "replicas' folders.",
    "docker_url": "Docker Engine address; the environment's default when unset.",
    "api_host": "Address the API listens on.",
    "api_port": "Port the API listens on.",
    "worker_metrics_host": "Address a worker's metrics listen on.",
    "deploy_timeout_s": "Seconds a new generation has to become healthy.",
    "drain_timeout_s": "Seconds an old generation's in-flight requests have to finish.",
    "stop_grace_s": "Seconds between SIGTERM and SIGKILL for a replica.",
    "lease_s": "A task's lease; a worker silent this long loses it to another.",
    "max_attempts": ("Times a task is run: each claim counts, so a task whose worker died, "
                     "stopped or ran past the job timeout fails after this many."),
    "worker_max_jobs": "Tasks one worker runs at once.",
    "reconcile_interval_s": "Seconds between reconciler passes.",
    "routes_poll_s": "The gateway reloads its routes at least this often.",
    "max_body_bytes": "Largest request body the API reads.",
    "log_level": "debug, info, warning or error.",
    "log_json": "JSON log lines (default: when not on a terminal).",
}


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    return f"`{value}`"


def table() -> str:
    source = _fields_in_source()
    rows = ["| variable | type | default | what |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        annotation, comment = source.get(name, ("", ""))
        what = comment or _DESCRIPTIONS.get(name, "")
        rows.append(f"| `GREENROOM_{name.upper()}` | `{annotation.replace('|', chr(92) + '|')}`"
                    f" | {_default(field.default)} | {what} |")
    return "\n".join(rows)


def render(page: str) -> str:
    """`page` with its settings table replaced by the current one."""
    head, rest = page.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main() -> None:
    OPERATIONS.write_text(render(OPERATIONS.read_text()))
    print(f"wrote the settings table to {OPERATIONS}", file=sys.stderr)


if __name__ == "__main__":
    main()

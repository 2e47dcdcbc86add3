"""`compose.yaml` and `compose.stack.yaml` are checked the way Docker reads them (issue 32):
`docker-compose config` (Debian's docker-compose, which .ci/run installs) and `docker stack
config` render each file with its required settings, and refuse it, naming the setting, when
one is missing. (Bringing the compose stack itself up needs the postgres:16 and redis:7 images
from a registry, which this machine cannot reach: docs/scale-out.md.)"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent.parent
REQUIRED = {"GREENROOM_SECRET_KEY": "k" * 8 + "0123456789abcdef0123456789abcdef",
            "GREENROOM_REDIS_PASSWORD": "compose-check-password"}


def _tool(name: str) -> None:
    if shutil.which(name) is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but `{name}` is not installed (.ci/run installs it)",
                        pytrace=False)
        pytest.skip(f"`{name}` is not installed")


def _render(command: list[str], settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")} | settings
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


CHECKS = {
    "compose.yaml": ["docker-compose", "-f", "compose.yaml", "config"],
    "compose.stack.yaml": ["docker", "stack", "config", "-c", "compose.stack.yaml"],
}


@pytest.mark.parametrize("file", sorted(CHECKS))
def test_compose_file_renders_with_its_settings_and_names_a_missing_one(file: str) -> None:
    command = CHECKS[file]
    _tool(command[0])
    done = _render(command, REQUIRED)
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    services = rendered["services"]
    assert {"postgres", "redis", "api", "gateway", "worker"} <= set(services), services
    for name, service in services.items():
        env = service.get("environment") or {}
        if "GREENROOM_REDIS_URL" in env:
            assert env["GREENROOM_REDIS_URL"].startswith(
                f"redis://greenroom:{REQUIRED['GREENROOM_REDIS_PASSWORD']}@redis:"), name
            assert env["GREENROOM_SECRET_KEY"] == REQUIRED["GREENROOM_SECRET_KEY"], name
    start = " ".join(services["redis"]["command"])
    assert "user greenroom on #%s" in start and "user default off" in start, "its ACL user"
    assert REQUIRED["GREENROOM_REDIS_PASSWORD"] not in start, "the password on no command line"
    for missing in REQUIRED:
        refused = _render(command, {k: v for k, v in REQUIRED.items() if k != missing})
        assert refused.returncode != 0, f"{file} rendered without {missing}"
        assert missing in refused.stderr + refused.stdout, refused.stderr

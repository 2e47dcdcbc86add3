"""`greenroom up` on a machine with nothing configured prints a curl that returns an embedding."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from worker.runtimes.process import free_port

REPO = Path(__file__).resolve().parents[2]


def test_up_once_with_embedded_services_prints_a_working_curl(embedded_tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    gateway_port = free_port("127.0.0.1")
    env |= {"GREENROOM_STATE_DIR": str(embedded_tmp / "state"),
            "GREENROOM_API_PORT": str(free_port("127.0.0.1")),
            "GREENROOM_GATEWAY_PORT": str(gateway_port)}
    done = subprocess.run([sys.executable, "-m", "launch.cli", "up", "--once"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "embedded Postgres" in out and "embedded Redis" in out
    assert "replicas             as processes of this machine" in out, "what runs where"
    command = re.search(r"^\s+(curl -s .*)$", out, re.MULTILINE)
    assert command, out
    assert f"http://127.0.0.1:{gateway_port}/v1/embeddings" in command.group(1), \
        "the example goes through the gateway, not the API"
    # The printed curl answered while the service ran; its output follows the command.
    # up prints the start of the answer only, so it is read as text, not parsed as JSON.
    body = out[command.end():].strip().splitlines()[0]
    assert re.match(r'\{"object":\s*"list"', body), body
    assert "task done" in out.split("undeploying")[1], "the bundled model was undeployed"
    took = re.search(r"the default deployment served ([\d.]+) s after it was accepted "
                     r"\((.*)\)", out)
    assert took and "health_checking" in took.group(2), out
    assert "replicas run onnx fp32" in took.group(2), "the default runs the ONNX export"
    print(took.group(0))
    numbers = re.findall(r"-?\d+\.\d+(?:e-?\d+)?", body)
    assert len(numbers) >= 10


def test_up_curl_output_is_a_384_number_embedding(embedded_tmp: Path) -> None:
    """Runs the service, then the printed curl itself, and counts the numbers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    port = free_port("127.0.0.1")
    env |= {"GREENROOM_STATE_DIR": str(embedded_tmp / "state"), "GREENROOM_API_PORT": str(port),
            "GREENROOM_GATEWAY_PORT": str(free_port("127.0.0.1"))}
    proc = subprocess.Popen([sys.executable, "-m", "launch.cli", "up"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        command, printed = None, []
        for line in proc.stdout:
            printed.append(line)
            if line.strip().startswith("curl -s"):
                command = line.strip()
                break
        assert command, "up printed no curl:\n" + "".join(printed)
        result = subprocess.run(command, shell=True, capture_output=True, text=True,
                                timeout=60, check=True)
        embedding = json.loads(result.stdout)["data"][0]["embedding"]
        assert len(embedding) == 384 and all(isinstance(x, float) for x in embedding)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _up_once(state: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    env |= {"GREENROOM_STATE_DIR": str(state),
            "GREENROOM_API_PORT": str(free_port("127.0.0.1")),
            "GREENROOM_GATEWAY_PORT": str(free_port("127.0.0.1"))}
    env |= {f"GREENROOM_{k.upper()}": v for k, v in settings.items()}
    return subprocess.run([sys.executable, "-m", "launch.cli", "up", "--once"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def test_up_refuses_a_taken_port_in_one_line_before_starting_anything(tmp_path: Path) -> None:
    """A second `up` beside a running one (the issue's 401 read as a task, then a KeyError):
    it now stops at once and says which port is taken."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = _up_once(tmp_path / "state", api_port=str(port))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if "failed:" in line]
    assert failed == [f"greenroom up: failed: 127.0.0.1:{port} for the API is taken "
                      "(Address already in use): is another `greenroom up` running? Stop it, "
                      "or set GREENROOM_API_PORT"], done.stdout
    assert not (tmp_path / "state" / "postgres").exists(), "nothing was started"


def test_up_prints_a_refused_deploy_as_one_line_and_exits_non_zero(embedded_tmp: Path) -> None:
    """Any non-2xx answer while `up` deploys the bundled model: one line with its status and
    message, exit 1, no traceback. Forced here by a body limit smaller than the deploy's."""
    done = _up_once(embedded_tmp / "state", max_body_bytes="16")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if "failed:" in line]
    assert len(failed) == 1 and re.fullmatch(
        r"greenroom up: failed: POST /deploy answered 413: .+", failed[0]), done.stdout
    assert "stopped 0 replica(s)" in done.stdout, "up still stopped what it started"

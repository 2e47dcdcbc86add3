"""`greenroom up` on a machine with nothing configured prints a curl that returns an embedding."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from worker.runtimes.process import free_port

REPO = Path(__file__).resolve().parent.parent


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
    command = re.search(r"^\s+(curl -s .*)$", out, re.MULTILINE)
    assert command, out
    assert f"http://127.0.0.1:{gateway_port}/v1/embeddings" in command.group(1), \
        "the example goes through the gateway, not the API"
    # The printed curl answered while the service ran; its output follows the command.
    # up prints the start of the answer only, so it is read as text, not parsed as JSON.
    body = out[command.end():].strip().splitlines()[0]
    assert re.match(r'\{"object":\s*"list"', body), body
    assert "task done" in out.split("undeploying")[1], "the bundled model was undeployed"
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

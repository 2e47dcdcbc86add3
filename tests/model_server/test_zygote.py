"""model_server/zygote.py's own parts, in a fresh interpreter started as the worker starts a
zygote (with room in its environment block): a child's environment replaced exactly, for
Python, for C code and in /proc/<pid>/environ; too large a one refused untouched; no fork
while a second thread runs. (tests/worker/test_fork_server.py runs whole replicas.)"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import ctypes, json, os, socket, threading, time
from model_server import zygote

libc = ctypes.CDLL(None)
libc.getenv.restype = ctypes.c_char_p
os.environ.pop(zygote.ROOM_VARIABLE)
wanted = {"ONLY_IN_CHILD": "yes", "PATH": os.environ["PATH"], "ÜNICODE": "välue"}
try:
    zygote.replace_environ({"HUGE": "x" * 200_000})
    too_large = None
except ValueError as exc:
    too_large = str(exc)
after_refusal = dict(os.environ)
zygote.replace_environ(wanted)
raw = open("/proc/self/environ", "rb").read()
stop = threading.Event()
thread = threading.Thread(target=stop.wait)
thread.start()
try:
    zygote.Zygote(socket.socket())._fork({"folder": "/"}, -1)
    second_thread = None
except RuntimeError as exc:
    second_thread = str(exc)
stop.set()
print(json.dumps({
    "environ": dict(os.environ), "after_refusal": after_refusal, "too_large": too_large,
    "getenv": {k: (libc.getenv(k.encode()) or b"").decode() for k in ("ONLY_IN_CHILD", "KEPT")},
    "proc": [item.decode() for item in raw.split(b"\\0") if item],
    "zeroed": raw.endswith(b"\\0" * 1000), "second_thread": second_thread}))
"""


def test_a_child_environment_is_replaced_exactly_everywhere_it_can_be_read() -> None:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "KEPT": "zygote's own",
           "OPENBLAS_NUM_THREADS": "1", "ZYGOTE_ENVIRON_ROOM": "x" * 120_000}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=60)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    wanted = {"ONLY_IN_CHILD": "yes", "PATH": os.environ["PATH"], "ÜNICODE": "välue"}
    assert found["environ"] == wanted
    assert found["getenv"] == {"ONLY_IN_CHILD": "yes", "KEPT": ""}, "C code sees it too"
    assert sorted(found["proc"]) == sorted(f"{k}={v}" for k, v in wanted.items())
    assert found["zeroed"], "the rest of the zygote's block is zeroed, not left readable"
    assert "exceeds the room" in found["too_large"]
    assert found["after_refusal"]["KEPT"] == "zygote's own", "a refusal changes nothing"
    assert "2 threads" in found["second_thread"]

"""Entry point: ``python -m model_server``."""

import os
import sys

# structlog imports rich, when it is installed, for its console tracebacks: ~70 ms and
# ~4 MB of a replica's start that logs JSON (issue 28). A replica process never uses it;
# structlog falls back to plain tracebacks when the import fails.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

from model_server.preload import begin  # noqa: E402

# The onnx model loads on a thread while the server's own imports run (preload.py).
preload = begin()

from model_server.server import main  # noqa: E402

code = main(preload)
# The server has closed what it owns (its last log line is written). The interpreter's own
# finalisation, tearing down ONNX Runtime (or torch) and every module, took 0.4-0.5 s more
# of each stop, which a worker waits for before it counts the replica gone (issue 28).
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)

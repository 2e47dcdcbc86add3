"""Entry point: ``python -m model_server``."""

import sys

# structlog imports rich, when it is installed, for its console tracebacks: ~70 ms and
# ~4 MB of a replica's start that logs JSON (issue 28). A replica process never uses it;
# structlog falls back to plain tracebacks when the import fails.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

from model_server.preload import begin  # noqa: E402

# The onnx model loads on a thread while the server's own imports run (preload.py).
preload = begin()

from model_server.server import main  # noqa: E402

raise SystemExit(main(preload))

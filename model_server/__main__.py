"""Entry point: ``python -m model_server``."""

from model_server.server import main

raise SystemExit(main())

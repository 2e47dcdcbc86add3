"""A Postgres of the parallel phase's own, started by tests/run.sh at the phase's priority.

`make test` runs the CPU-bound parallel phase at nice 19 beside the timing-sensitive
serial lanes (tests/support/scheduling.py). Every process the phase starts inherits its
priority, but the machine's Postgres serves it at normal priority: its backends then
compete with the serial lanes' own queries (a gateway's route reload, a worker's claim) and
a serial test's timing changes with what the parallel phase does. Started under
`nice -n 19`, this cluster's backends (forked from its postmaster) run at the phase's
priority too.

    python -m tests.support.phase_postgres FOLDER

starts (or reuses) an embedded cluster in FOLDER (pgserver, as `make up` embeds one),
prints its admin DSN on one line, and keeps it until stdin closes or a SIGTERM/SIGINT:
then it stops the cluster and exits.
"""

import signal
import sys
from pathlib import Path
from types import FrameType

from launch.embedded import start_postgres


def main(folder: Path) -> None:
    dsn, server = start_postgres(folder)
    print(dsn, flush=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        sys.stdin.read()  # until run.sh closes it (or dies)
    finally:
        server.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

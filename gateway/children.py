"""The processes a gateway starts end with it, however it ends.

`greenroom gateway --engine haproxy` starts HAProxy and the Python gateways behind it, and a
Python gateway with `GREENROOM_GATEWAY_PROCESSES` > 1 starts its peers. A gateway stopped
by a signal stops them itself; one killed (SIGKILL, the OOM killer, a crash) could not, and
they went on: HAProxy serving routes nobody updates any more (it spun at 60 % of a core,
orphaned, in the test suite), the peers holding the port. `die_with_parent` (a child's
`preexec_fn`) asks Linux to send the child SIGTERM when the gateway exits
(prctl PR_SET_PDEATHSIG), so each child stops as it would on `greenroom stop`.
"""

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGTERM when this process exits; None where
    the kernel has no such request (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the child
    parent = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the gateway exited before the request was made
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child

"""Folders only their owner may enter (review L4): the state folder, the model store, the
process runtime's replica folders. Every Greenroom process runs as one user; a second local
user of the host reaches nothing under them.

The model store's own folders stay readable by any uid (0755 folders, 0644 files) because a
Docker replica reads its bind-mounted model as the container's user (uid 10001, not ours):
the container enters the mount directly, while on the host the store's 0700 root stops
everyone else on the way in.
"""

import contextlib
import os
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """`path` made (with its parents) and left enterable by its owner only."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    try:
        os.chmod(path, PRIVATE_DIR)  # an existing folder keeps its mode through mkdir
    except OSError as exc:  # a folder another user owns (a configured, shared path)
        log.warning("folder_not_made_private", path=str(path), error=exc.strerror)
    return path


def private_append(path: Path) -> int:
    """A file descriptor appending to `path`, created (or left) readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
    with contextlib.suppress(OSError):
        os.fchmod(fd, PRIVATE_FILE)
    return fd

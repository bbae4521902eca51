"""Making a name change survive a crash: the one place that syncs a directory.

A file's ``fsync`` makes its bytes durable, not its name: a new file, a rename over an old one
or an unlink is in the directory, which a crash may lose unless the directory itself is synced
afterwards. The cache's key files, the central policy's copy, the roaming profile's state and
the local upstream's atomic writes all end with it.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path | str | bytes) -> None:
    """Sync the directory ``path``: the names made, replaced or removed in it are on the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

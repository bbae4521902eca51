"""``LoopDisk``: a real ext4 file system in an image file, loop-mounted, for the cache-at-rest tests.

With ``encrypt=True`` it is made with ext4's ``encrypt`` feature (``mkfs.ext4 -O encrypt``),
so fscrypt works on it; without, it is the ext4 most machines have, where it does not.
``raw_contains`` reads the image file itself — what a thief who takes the disk reads — after
the file system's dirty pages went down (``sync``). Needs root (``mount -o loop``) and
e2fsprogs; ``bash .ci/setup`` runs everything as root on Debian, where both are there.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

MiB = 1 << 20


class LoopDisk:
    def __init__(self, workdir: Path, *, encrypt: bool, size_mib: int = 96) -> None:
        self.image = workdir / ("encrypting.img" if encrypt else "plain.img")
        self.mountpoint = workdir / ("encrypting-disk" if encrypt else "plain-disk")
        self.encrypt = encrypt
        self.size = size_mib * MiB

    def __enter__(self) -> LoopDisk:
        self.image.parent.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.size)
        features = ["-O", "encrypt"] if self.encrypt else []
        subprocess.run(["mkfs.ext4", "-q", "-F", *features, str(self.image)], check=True,
                       capture_output=True, timeout=60)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mountpoint)], check=True,
                       capture_output=True, timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", "-l", str(self.mountpoint)], check=False, capture_output=True, timeout=60)
        self.image.unlink(missing_ok=True)

    def flush(self) -> None:
        """Everything written on the file system down to the image file."""
        os.sync()

    def raw_contains(self, needle: bytes) -> bool:
        self.flush()
        with open(self.image, "rb") as f:
            tail = b""
            while block := f.read(4 * MiB):
                if needle in tail + block:
                    return True
                tail = block[-len(needle):]
        return False

r"""The plain-smbprotocol reference for first reads: ``python -m bench.smbref ...``.

Reads one server file start to end with cscd's own ``SmbUpstream`` (smbprotocol's low-level
API, 1 MiB requests pipelined 8 deep inside each 8 MiB read, as the cache's read-ahead asks
for them) and prints one JSON line: ``{"seconds": …, "bytes": …, "digest": …}``. The connect is
not timed. Runs in its own process so that neither the bench's proxy thread nor its timing
loop shares a GIL with it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import trio
import xxhash

from cscd.policy.credentials import load_credentials
from cscd.policy.unc import parse_unc
from cscd.types import SmbSecurity
from cscd.upstream.smb import SmbUpstream

READ_BYTES = 8 << 20


async def _read(args: argparse.Namespace) -> dict[str, object]:
    up = SmbUpstream(parse_unc(args.unc), load_credentials(Path(args.credentials)), port=args.port,
                     security=SmbSecurity(require_encryption=args.encryption), timeout_s=30.0)
    try:
        await up.connect()
        path = args.path.encode()
        size = (await up.stat(path)).size
        h = xxhash.xxh3_128()
        t0 = time.perf_counter()
        pos = 0
        while pos < size:
            data = await up.read(path, pos, min(READ_BYTES, size - pos))
            if not data:
                break
            h.update(data)
            pos += len(data)
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "bytes": pos, "digest": h.hexdigest()}
    finally:
        await up.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.smbref")
    p.add_argument("--unc", required=True, help=r"the folder, e.g. \\127.0.0.1\share\bench\Documents")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--credentials", required=True)
    p.add_argument("--path", required=True, help="file below the folder, / separated")
    p.add_argument("--encryption", action="store_true")
    args = p.parse_args(argv)
    print(json.dumps(trio.run(_read, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

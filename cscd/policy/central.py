r"""The central policy source: policy files kept on the SMB server, copied at logon if changed.

Owns the local read-only copy of a server folder of policy files (like Group Policy in SYSVOL
or FSLogix's ``RedirXMLSourceFolder``): which files are copied (``*.yaml`` and
``redirections.xml``), the change test (size, write time and server FileId against a manifest
of the last copy) and the atomic update of the copy. ``machine.py`` then reads the copy as the
last files of the file order. The daemon calls it at start and at every reload
(``operations.policy_in_force.refresh_central_copy``, with a deadline; a failure leaves the last copy).

Talks to the server only through an object with the ``stat``/``list_dir``/``read`` methods of
``cscd.upstream.base.Upstream`` (declared here as ``PolicySource``, so this leaf-level package
does not import ``upstream``); it never writes to the server. Local writes (a few small files)
run in a worker thread. Everything is read from the server and validated (``schema.parse_file``
for YAML, ``fslogix`` for ``redirections.xml``: whatever can be checked without knowing the
user) before anything local changes, so a server that fails midway — or an admin's typo in one
central file — leaves the last good copy as it was: one bad file on the server must not stop
every client of the fleet at its next start.

Not supported: subfolders in the source folder (ignored), files over ``MAX_POLICY_FILE_BYTES``
(refused), two processes copying into the same directory at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from cscd.durable import fsync_dir
from cscd.errors import ConfigError, UpstreamError
from cscd.policy.fslogix import parse_redirections_xml
from cscd.policy.located import MAX_POLICY_FILE_BYTES
from cscd.policy.schema import parse_file
from cscd.types import RemoteEntry

MANIFEST = ".manifest.json"
FSLOGIX_FILE = "redirections.xml"
_READ_CHUNK = 1 << 20
#: A file that changes under us while we read it is read again this often, then refused.
_READ_ATTEMPTS = 3


class CentralPolicyRejected(ConfigError):
    """A file of the central source does not validate; the message names the server file,
    the line and the key. The last good copy is left as it was."""


class PolicySource(Protocol):
    """The part of ``Upstream`` this module uses (``SmbUpstream`` and ``LocalUpstream`` fit)."""

    async def stat(self, path: bytes) -> RemoteEntry: ...

    async def list_dir(self, path: bytes) -> list[RemoteEntry]: ...

    async def read(self, path: bytes, offset: int, length: int, *,
                   timeout_s: float | None = None) -> bytes: ...


@dataclass(frozen=True, slots=True)
class CentralCopy:
    """What one logon's copy did; ``reads`` counts read requests sent to the server."""

    copied: tuple[str, ...]
    unchanged: tuple[str, ...]
    removed: tuple[str, ...]
    reads: int
    bytes_read: int


def is_policy_file_name(name: str) -> bool:
    return (not name.startswith(".") and "/" not in name
            and (name.endswith(".yaml") or name.casefold() == FSLOGIX_FILE))


def _version(entry: RemoteEntry) -> list[int]:
    return [entry.size, entry.mtime_ns, entry.file_id]


def read_manifest(cache_dir: Path) -> dict[str, list[int]]:
    """Name → [size, mtime_ns, file_id] of the last copy; {} if there is none or it is damaged
    (then every file is copied again, which is safe)."""
    try:
        data = json.loads((cache_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, list)}


async def copy_central_policy(source: PolicySource, directory: bytes,
                              cache_dir: Path) -> CentralCopy:
    """Bring ``cache_dir`` up to date with the policy files in ``directory`` on the server.

    Waits on the network: one listing, plus reads only of files whose size, write time or
    FileId differ from the last copy (an unchanged folder costs no read at all). Files gone
    from the server are removed locally. Copies are mode 0444.

    Raises what the source raises (``UpstreamUnavailable``, ``UpstreamTimeout``,
    ``AccessDenied``, ``NotFound``) with ``cache_dir`` untouched, so the caller can go on with
    the last copy; ``ConfigError`` for a source that is not a folder or holds a file too big to
    be a policy. Cancellation before the local update leaves the old copy; during it, the next
    call repairs the copy (the manifest is written last).
    """
    root = await source.stat(directory)
    if not root.is_dir:
        raise ConfigError(f"central policy source {directory.decode(errors='replace')!r} "
                          f"is not a folder")
    manifest = read_manifest(cache_dir)
    wanted: dict[str, RemoteEntry] = {}
    for entry in await source.list_dir(directory):
        name = entry.name.decode("utf-8", errors="replace")
        if not entry.is_dir and is_policy_file_name(name):
            wanted[name] = entry

    fresh: dict[str, tuple[RemoteEntry, bytes]] = {}
    unchanged: list[str] = []
    reads = bytes_read = 0
    for name, entry in sorted(wanted.items()):
        if manifest.get(name) == _version(entry) and (cache_dir / name).is_file():
            unchanged.append(name)
            continue
        path = directory + b"/" + entry.name if directory else entry.name
        entry, data, n = await _read_whole(source, path, entry)
        reads += n
        bytes_read += len(data)
        fresh[name] = (entry, data)

    stale = sorted(n for n in manifest if n not in wanted)
    new_manifest = {n: _version(wanted[n]) for n in unchanged}
    new_manifest.update({n: _version(e) for n, (e, _) in fresh.items()})
    if fresh or stale or not (cache_dir / MANIFEST).exists():
        contents = {n: data for n, (_, data) in fresh.items()}
        where = getattr(source, "description", "the central source")
        await trio.to_thread.run_sync(_update_copy, cache_dir, contents, stale, new_manifest, where)
    return CentralCopy(tuple(sorted(fresh)), tuple(unchanged), tuple(stale), reads, bytes_read)


async def _read_whole(source: PolicySource, path: bytes, entry: RemoteEntry
                      ) -> tuple[RemoteEntry, bytes, int]:
    """Read a file completely; re-read if it changed meanwhile. Returns entry, data, reads."""
    reads = 0
    for _ in range(_READ_ATTEMPTS):
        if entry.size > MAX_POLICY_FILE_BYTES:
            raise ConfigError(f"central policy file {path.decode(errors='replace')!r} is "
                              f"{entry.size} bytes; at most {MAX_POLICY_FILE_BYTES} are allowed")
        parts = []
        offset = 0
        while True:
            chunk = await source.read(path, offset, _READ_CHUNK)
            reads += 1
            parts.append(chunk)
            offset += len(chunk)
            if len(chunk) < _READ_CHUNK or offset > MAX_POLICY_FILE_BYTES:
                break
        after = await source.stat(path)
        data = b"".join(parts)
        if after.same_version(entry) and len(data) == entry.size:
            return entry, data, reads
        entry = after
    raise UpstreamError(f"central policy file {path.decode(errors='replace')!r} keeps changing "
                        f"while it is read; try again later")


def _validate(staging: Path, name: str, data: bytes, where: str) -> None:
    """Raise ``CentralPolicyRejected`` naming ``where``'s file if ``data`` does not validate."""
    path = staging / name
    try:
        if name.casefold() == FSLOGIX_FILE:
            parse_redirections_xml(data, f"{where}\\{name}")
        else:
            _write_atomic(path, data, 0o444)
            parse_file(path, is_central=True)
    except ConfigError as exc:
        raise CentralPolicyRejected(str(exc).replace(str(path), f"{where}\\{name}")) from None


def _update_copy(cache_dir: Path, contents: Mapping[str, bytes], stale: list[str],
                 manifest: Mapping[str, list[int]], where: str = "the central source") -> None:
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    staging = cache_dir / ".incoming"
    staging.mkdir(exist_ok=True, mode=0o700)
    try:
        for name, data in contents.items():
            _validate(staging, name, data, where)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    for name, data in contents.items():
        _write_atomic(cache_dir / name, data, 0o444)
    for name in stale:
        try:
            (cache_dir / name).unlink()
        except FileNotFoundError:
            pass
    _write_atomic(cache_dir / MANIFEST, json.dumps(manifest, sort_keys=True).encode(), 0o644)
    fsync_dir(cache_dir)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

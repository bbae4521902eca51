"""The benchmark cases: what each one puts on the server, what it measures, how it compares.

Owns the data-path cases: cached reads, writes, first reads, metadata walks, small files, delta
uploads and hashing (``bench/stress.py`` has the cases where something else happens meanwhile:
an upload, a server crash; ``bench/__main__.py`` lists them all in order). A case has an
optional ``prepare(env, opts)`` that runs before the mounts start (server-side test data, so
nothing is listed or cached yet) and a ``run(env, opts, result, state)`` that takes samples
into ``result`` cells and declares the rows that compare them. Every sample is taken through
``Cell.sample`` or an explicit try/except, so one failing measurement never stops the case,
and a failing case never stops the run.

Sides are ``cscd`` and ``rclone`` (both mounts), ``local`` (a directory on the same disk as
the caches) and, for first reads, ``smbprotocol`` (cscd's ``SmbUpstream`` alone).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from bench.fileio import (
    KiB,
    MiB,
    ServerFile,
    can_drop_caches,
    digest_bytes,
    drop_caches,
    file_digest,
    gnu_ls,
    make_bytes,
    make_file,
    read_file,
    wait_for,
    walk_lstat,
    walk_names,
    write_file,
)
from bench.harness import REPO_ROOT, Env
from bench.report import CaseResult

MB = 1e6
GB = 1e9
CLIENTS = ("cscd", "rclone")


@dataclass(frozen=True)
class Options:
    size: int
    repeat: int
    meta_files: int
    small_files: int = 1000
    small_bytes: int = 4 * KiB
    loss_window_s: float = 3.0
    loss_cap_s: float = 30.0
    scale_files: int = 1_000_000
    #: how long the scale case watches cscd for its background work to end (twice)
    busy_cap_s: float = 90.0
    #: seconds each stress-ng job of the churn case runs
    stress_s: int = 10
    #: seconds each idle step of the fleet cases is counted (requests per minute need minutes)
    fleet_window_s: float = 120.0

    @property
    def upload_timeout_s(self) -> float:
        """How long a file of ``size`` may take to reach the server (generous: 20 MB/s + 60 s)."""
        return 60.0 + self.size / (20 * MB)


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    run: Callable[[Env, Options, CaseResult, Any], None]
    prepare: Callable[[Env, Options], Any] | None = None
    needs_mounts: bool = True


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / MB


def _link_into(src: Path, dst: Path) -> None:
    """Give ``src`` a second name ``dst`` on the server's disk (same content, no copy)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.link(src, dst)


def _copy_into(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _hydrate(path: Path, digest: str, size: int) -> None:
    """Read ``path`` through a mount once, so the client caches it; check every byte."""
    h = xxhash.xxh3_128()
    _, n = read_file(path, hasher=h)
    if n != size or h.hexdigest() != digest:
        raise RuntimeError(f"{path}: read {n} bytes with digest {h.hexdigest()}, expected {size} bytes "
                           f"with digest {digest}")


def _need_cold() -> None:
    if not can_drop_caches():
        raise PermissionError("cold-cache samples need root (echo 3 > /proc/sys/vm/drop_caches)")


def _settle(seconds: float = 0.3) -> None:
    """A short pause so the last replies of an operation pass the proxy before counters are read."""
    time.sleep(seconds)


# ====================================================================== 1. cached reads


def prepare_read(env: Env, o: Options) -> str:
    src = env.server_dir("cscd") / "read" / "cached.bin"
    digest = make_file(src, "read", o.size)
    _link_into(src, env.server_dir("rclone") / "read" / "cached.bin")
    make_file(env.local / "read.bin", "read", o.size)
    return digest


def run_read(env: Env, o: Options, res: CaseResult, digest: str) -> None:
    paths: dict[str, Path] = {"local": env.local / "read.bin"}
    for name in CLIENTS:
        try:
            side = env.side(name)
            p = side.root / "read" / "cached.bin"
            _hydrate(p, digest, o.size)
            paths[name] = p
        except Exception as exc:  # noqa: BLE001
            for kind in ("cold", "warm"):
                res.cell(f"{kind}.{name}", "MB/s").fail(exc)
    wire0 = {n: env.side(n).proxy.bytes_to_client for n in paths if n != "local"}  # sides that just worked

    def read_once(p: Path, cold: bool) -> float:
        if cold:
            _need_cold()
            drop_caches()
        t, n = read_file(p)
        if n != o.size:
            raise RuntimeError(f"{p}: read {n} bytes, expected {o.size}")
        return mbps(n, t)

    for _ in range(o.repeat):
        for name, p in paths.items():
            res.cell(f"cold.{name}", "MB/s").sample(lambda p=p: read_once(p, True))
            res.cell(f"warm.{name}", "MB/s").sample(lambda p=p: read_once(p, False))
    for name, before in wire0.items():
        try:
            fetched = env.side(name).proxy.bytes_to_client - before
        except RuntimeError as exc:  # the client died meanwhile; its cells say so
            fetched = str(exc)
        res.info[f"wire_bytes_from_server_during_cached_reads.{name}"] = fetched
    for kind in ("cold", "warm"):
        res.row(f"{kind} page cache, {o.size // MiB} MiB file", f"{kind}.cscd", f"{kind}.local", "local disk",
                higher_is_better=True)
        res.row(f"{kind} page cache, {o.size // MiB} MiB file", f"{kind}.cscd", f"{kind}.rclone", "rclone",
                higher_is_better=True)


# ====================================================================== 2. writes


def run_write(env: Env, o: Options, res: CaseResult, _state: None) -> None:
    data = make_bytes("write", o.size)
    digest = digest_bytes(data)
    roots: dict[str, Any] = {}
    for name in CLIENTS:
        try:
            side = env.side(name)
            (side.root / "write").mkdir(exist_ok=True)
            roots[name] = side
        except Exception as exc:  # noqa: BLE001
            for key in ("write", "to_server", "end_to_end"):
                res.cell(f"{key}.{name}", "s").fail(exc)
    for i in range(o.repeat):
        local = env.local / f"write-{i}.bin"
        res.cell("write.local", "MB/s").sample(lambda local=local: mbps(o.size, write_file(local, data)))
        local.unlink(missing_ok=True)
        for name, side in roots.items():
            w = res.cell(f"write.{name}", "MB/s")
            up = res.cell(f"to_server.{name}", "s")
            e2e = res.cell(f"end_to_end.{name}", "MB/s")
            stage = "write"
            try:
                side = env.side(name)
                side.proxy.reset_counters()
                t_write = write_file(side.root / "write" / f"w{i}.bin", data)
                w.add(mbps(o.size, t_write))
                stage = "upload"
                t_closed = time.perf_counter()
                wait_for(ServerFile(side.server / "write" / f"w{i}.bin", o.size, digest), o.upload_timeout_s,
                         f"{name}: w{i}.bin on the server", interval_s=0.02)
                t_up = time.perf_counter() - t_closed
                up.add(t_up)
                e2e.add(mbps(o.size, t_write + t_up))
                _settle()
                res.cell(f"wire_per_byte.{name}", "B/B").add(side.proxy.bytes_to_server / o.size)
            except Exception as exc:  # noqa: BLE001
                cells = (w, up, e2e) if stage == "write" else (up, e2e)
                for c in cells:
                    c.fail(exc)
    for side in roots.values():  # not timed: free the space
        for i in range(o.repeat):
            try:
                (side.root / "write" / f"w{i}.bin").unlink(missing_ok=True)
            except OSError:
                pass
    mib = o.size // MiB
    res.row(f"write {mib} MiB + fsync", "write.cscd", "write.local", "local disk", higher_is_better=True)
    res.row(f"write {mib} MiB + fsync", "write.cscd", "write.rclone", "rclone", higher_is_better=True)
    res.row("from close until on the server (s)", "to_server.cscd", "to_server.rclone", "rclone",
            higher_is_better=False)
    res.row("write + upload, end to end", "end_to_end.cscd", "end_to_end.rclone", "rclone", higher_is_better=True)
    res.row("bytes to the server per byte written", "wire_per_byte.cscd", "wire_per_byte.rclone", "rclone",
            higher_is_better=False)


# ====================================================================== 3. first read of an uncached file


#: The first read again over a link with this round trip (the proxies delay each direction by
#: half), with a file of at most ``SLOW_LINK_BYTES``: where read-ahead, not CPU, decides.
SLOW_LINK_RTT_S = 0.040
SLOW_LINK_BYTES = 128 * MiB


def _slow_size(o: Options) -> int:
    return min(o.size, SLOW_LINK_BYTES)


def prepare_first_read(env: Env, o: Options) -> list[tuple[str, int, str]]:
    """(relative path, size, digest) of each file to read once: ``repeat`` on the plain link,
    then ``repeat`` on the slow one."""
    files = []
    for prefix, size in (("r", o.size), ("slow", _slow_size(o))):
        for i in range(o.repeat):
            rel = f"first-read/{prefix}{i}.bin"
            src = env.server_dir("cscd") / rel
            files.append((rel, size, make_file(src, f"first-read-{prefix}-{i}", size)))
            _link_into(src, env.server_dir("rclone") / rel)
    return files


def _smbprotocol_read(env: Env, rel: str) -> tuple[float, int, str]:
    assert env.samba is not None and env.credentials is not None
    cmd = [sys.executable, "-m", "bench.smbref", "--unc", env.samba.unc("bench\\Documents"),
           "--port", str(env.proxies["ref"].port), "--credentials", str(env.credentials), "--path", rel]
    if env.encryption:
        cmd.append("--encryption")
    penv = dict(os.environ)
    penv["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + penv["PYTHONPATH"] if penv.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=penv, timeout=600, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"bench.smbref exited with {proc.returncode}: {tail[0]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(out["seconds"]), int(out["bytes"]), str(out["digest"])


def _first_reads(env: Env, res: CaseResult, files: list[tuple[str, int, str]], tag: str) -> None:
    """Read each file once with the smbprotocol reference and once through each mount."""
    for rel, size, digest in files:
        def ref(rel: str = rel, size: int = size, digest: str = digest) -> float:
            _need_cold()
            drop_caches()
            seconds, n, got = _smbprotocol_read(env, rel)
            if n != size or got != digest:
                raise RuntimeError(f"smbprotocol read {n} bytes with a wrong digest")
            return mbps(n, seconds)

        res.cell(f"{tag}.smbprotocol", "MB/s").sample(ref)
        for name in CLIENTS:
            def client(name: str = name, rel: str = rel, size: int = size, digest: str = digest) -> float:
                side = env.side(name)
                p = side.root / rel
                os.stat(p)  # not timed: the directory listing
                _need_cold()
                drop_caches()
                side.proxy.reset_counters()
                h = xxhash.xxh3_128()
                t, n = read_file(p, hasher=h)
                if n != size or h.hexdigest() != digest:
                    raise RuntimeError(f"{name}: read {n} bytes of {size} with digest {h.hexdigest()}")
                _settle(0.1)
                if tag == "read":
                    res.cell(f"wire_per_byte.{name}", "B/B").add(side.proxy.bytes_to_client / size)
                return mbps(n, t)

            res.cell(f"{tag}.{name}", "MB/s").sample(client)


def run_first_read(env: Env, o: Options, res: CaseResult, files: list[tuple[str, int, str]]) -> None:
    plain = [f for f in files if "/r" in f[0]]
    _first_reads(env, res, plain, "read")
    label = f"first read of a {o.size // MiB} MiB server file"
    res.row(label, "read.cscd", "read.smbprotocol", "smbprotocol", higher_is_better=True)
    res.row(label, "read.cscd", "read.rclone", "rclone", higher_is_better=True)
    res.row("bytes from the server per byte read", "wire_per_byte.cscd", "wire_per_byte.rclone", "rclone",
            higher_is_better=False)
    proxies = [env.proxies["ref"], *(env.side(name).proxy for name in CLIENTS)]
    for proxy in proxies:
        proxy.delay_s = SLOW_LINK_RTT_S / 2
    try:
        _first_reads(env, res, [f for f in files if "/slow" in f[0]], "slow")
    finally:
        for proxy in proxies:
            proxy.delay_s = 0.0
    label = f"first read of a {_slow_size(o) // MiB} MiB file over a {SLOW_LINK_RTT_S * 1000:.0f} ms round trip"
    res.row(label, "slow.cscd", "slow.smbprotocol", "smbprotocol", higher_is_better=True)
    res.row(label, "slow.cscd", "slow.rclone", "rclone", higher_is_better=True)
    res.note("smbprotocol = cscd.upstream.smb.SmbUpstream alone in a process of its own, sequential 8 MiB reads "
             "(8 x 1 MiB requests in flight), connect not timed; all three hash what they read (xxh3); "
             f"the round trip is the loopback proxies' delay ({SLOW_LINK_RTT_S / 2 * 1000:.0f} ms each way)")


# ====================================================================== 4. metadata


def _make_tree(root: Path, files: int, dirs: int = 100) -> int:
    per_dir = max(1, files // dirs)
    body = b"x" * 64
    for d in range(dirs):
        sub = root / f"d{d:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        for f in range(per_dir):
            (sub / f"f{f:05d}.txt").write_bytes(body)
    return dirs + dirs * per_dir


def prepare_metadata(env: Env, o: Options) -> int:
    entries = 0
    for t in range(o.repeat):
        for name in CLIENTS:
            entries = _make_tree(env.server_dir(name) / "meta" / f"tree-{t}", o.meta_files)
    _make_tree(env.local / "meta", o.meta_files)
    return entries


def run_metadata(env: Env, o: Options, res: CaseResult, entries: int) -> None:
    def walk(root: Path, fn: Callable[[Path], int], cold: bool) -> float:
        if cold:
            _need_cold()
            drop_caches()
        t0 = time.perf_counter()
        n = fn(root)
        dt = time.perf_counter() - t0
        if n != entries:
            raise RuntimeError(f"{root}: saw {n} entries, expected {entries}")
        return dt

    for t in range(o.repeat):
        roots: dict[str, Callable[[], Path]] = {"local": lambda: env.local / "meta"}
        for name in CLIENTS:
            roots[name] = lambda name=name, t=t: env.side(name).root / "meta" / f"tree-{t}"
        for name, root in roots.items():
            res.cell(f"cold.{name}", "s").sample(lambda root=root: walk(root(), walk_lstat, True))
            res.cell(f"warm.{name}", "s").sample(lambda root=root: walk(root(), walk_lstat, False))
            res.cell(f"find.{name}", "s").sample(lambda root=root: walk(root(), walk_names, False))
            res.cell(f"gnu_ls.{name}", "s").sample(lambda root=root: walk(root(), gnu_ls, False))
    what = f"{entries:,} entries in 100 dirs"
    for kind, label in (("cold", f"ls -lR, first listing, {what} (s)"), ("warm", f"ls -lR again, {what} (s)"),
                        ("find", f"find (names only) again, {what} (s)"),
                        ("gnu_ls", f"GNU ls -lR again (with its getxattr calls), {what} (s)")):
        res.row(label, f"{kind}.cscd", f"{kind}.local", "local disk", higher_is_better=False)
        res.row(label, f"{kind}.cscd", f"{kind}.rclone", "rclone", higher_is_better=False)
    res.note("ls -lR = os.walk + lstat of every entry in Python; GNU ls -lR = /bin/ls -lR itself, which "
             "also asks each entry for its SELinux label and POSIX ACL unless the file system said once "
             "that it keeps neither")
    # cscd re-lists every directory used in the last 5 minutes every 3 s: what that costs now.
    res.info["idle_after_walks"] = env.idle_cost()
    for name in ("local", *CLIENTS):
        c = res.cells.get(f"warm.{name}")
        if c is not None and c.median is not None:
            res.info[f"warm_lstat_us_per_entry.{name}"] = round(c.median / entries * 1e6, 2)


# ====================================================================== 5. small files


def _server_count(server_dir: Path, names: set[str], size: int) -> bool:
    try:
        with os.scandir(server_dir) as it:
            done = sum(1 for e in it if e.name in names and e.stat(follow_symlinks=False).st_size == size)
    except FileNotFoundError:
        return False
    return done == len(names)


def run_small(env: Env, o: Options, res: CaseResult, _state: None) -> None:
    n, fsize = o.small_files, o.small_bytes
    data = make_bytes("small", n * fsize)
    names = [f"f{k:05d}.txt" for k in range(n)]
    nameset = set(names)

    def write_all(d: Path) -> float:
        d.mkdir(parents=True, exist_ok=True)
        view = memoryview(data)
        t0 = time.perf_counter()
        for k, fname in enumerate(names):
            write_file(d / fname, view[k * fsize : (k + 1) * fsize], fsync=False)
        return time.perf_counter() - t0

    for i in range(o.repeat):
        local = env.local / f"small-{i}"
        res.cell("write.local", "files/s").sample(lambda local=local: n / write_all(local))
        shutil.rmtree(local, ignore_errors=True)
        for name in CLIENTS:
            w = res.cell(f"write.{name}", "files/s")
            e2e = res.cell(f"on_server.{name}", "files/s")
            stage = "write"
            try:
                side = env.side(name)
                (side.root / "small").mkdir(exist_ok=True)
                t0 = time.perf_counter()
                t_write = write_all(side.root / "small" / f"s{i}")
                w.add(n / t_write)
                stage = "upload"
                server = side.server / "small" / f"s{i}"
                wait_for(lambda server=server: _server_count(server, nameset, fsize), 30 + n * 0.05,
                         f"{name}: {n} files on the server", interval_s=0.02)
                e2e.add(n / (time.perf_counter() - t0))
                for k, fname in enumerate(names):  # not timed: every byte arrived
                    if (server / fname).read_bytes() != data[k * fsize : (k + 1) * fsize]:
                        raise RuntimeError(f"{name}: {fname} on the server has the wrong content")
            except Exception as exc:  # noqa: BLE001
                for c in ((w, e2e) if stage == "write" else (e2e,)):
                    c.fail(exc)
    what = f"{n:,} x {fsize // KiB} KiB"
    res.row(f"write {what} (files/s)", "write.cscd", "write.local", "local disk", higher_is_better=True)
    res.row(f"write {what} (files/s)", "write.cscd", "write.rclone", "rclone", higher_is_better=True)
    res.row(f"write {what} until all on the server (files/s)", "on_server.cscd", "on_server.rclone", "rclone",
            higher_is_better=True)


# ====================================================================== 6. delta


def prepare_delta(env: Env, o: Options) -> dict[str, Any]:
    sizes = {"A": o.size, "B": max(MiB, o.size // 4)}
    digests = {}
    for f, size in sizes.items():
        src = env.server_dir("cscd") / "delta" / f"{f}.bin"
        digests[f] = make_file(src, f"delta-{f}", size)
        _copy_into(src, env.server_dir("rclone") / "delta" / f"{f}.bin")
        _copy_into(src, env.local / "delta" / f"{f}.bin")  # the mirror: what the server must end up with
    return {"sizes": sizes, "digests": digests}


def _overwrite(path: Path, offset: int, patch: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, patch, offset)
    finally:
        os.close(fd)


def _insert_front(path: Path, prefix: bytes) -> int:
    """Rewrite ``path`` as ``prefix`` + old content, in place (as an editor that saves in place)."""
    with open(path, "rb") as f:
        old = f.read()
    new = prefix + old
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(new)
        off = 0
        while off < len(view):
            off += os.pwrite(fd, view[off : off + MiB], off)
    finally:
        os.close(fd)
    return len(new)


def _idle_wire(env: Env, name: str, seconds: float = 2.0) -> float:
    side = env.side(name)
    side.proxy.reset_counters()
    time.sleep(seconds)
    return (side.proxy.bytes_to_server + side.proxy.bytes_to_client) / seconds


def run_delta(env: Env, o: Options, res: CaseResult, state: dict[str, Any]) -> None:
    sizes: dict[str, int] = dict(state["sizes"])
    digests: dict[str, str] = dict(state["digests"])
    ready: list[str] = []
    for name in CLIENTS:
        try:
            side = env.side(name)
            for f in sizes:
                _hydrate(side.root / "delta" / f"{f}.bin", digests[f], sizes[f])
            ready.append(name)
        except Exception as exc:  # noqa: BLE001
            for key in ("A.wire", "B.wire", "A.time", "B.time"):
                res.cell(f"{key}.{name}", "B/B").fail(exc)
    for name in ready:
        try:
            res.info[f"idle_wire_bytes_per_s.{name}"] = round(_idle_wire(env, name))
        except Exception as exc:  # noqa: BLE001
            res.info[f"idle_wire_bytes_per_s.{name}"] = str(exc)
    mirror = {f: env.local / "delta" / f"{f}.bin" for f in sizes}
    for i in range(o.repeat):
        patch = make_bytes(f"delta-patch-{i}", MiB)
        offset = max(0, min(sizes["A"] - MiB, sizes["A"] // 2 - MiB // 2 + i * 4096))
        prefix = make_bytes(f"delta-insert-{i}", 10)
        _overwrite(mirror["A"], offset, patch)
        sizes["B"] = _insert_front(mirror["B"], prefix)
        digests = {f: file_digest(mirror[f]) for f in sizes}
        edits: dict[str, tuple[Callable[[Path], object], int]] = {
            "A": (lambda p, offset=offset, patch=patch: _overwrite(p, offset, patch), len(patch)),
            "B": (lambda p, prefix=prefix: _insert_front(p, prefix), len(prefix)),
        }
        for name in ready:
            for f, (edit, changed) in edits.items():
                wire = res.cell(f"{f}.wire.{name}", "B/B")
                took = res.cell(f"{f}.time.{name}", "s")
                try:
                    side = env.side(name)
                    side.proxy.reset_counters()
                    t0 = time.perf_counter()
                    edit(side.root / "delta" / f"{f}.bin")
                    wait_for(ServerFile(side.server / "delta" / f"{f}.bin", sizes[f], digests[f]),
                             o.upload_timeout_s, f"{name}: edited {f}.bin on the server", interval_s=0.02)
                    took.add(time.perf_counter() - t0)
                    _settle()
                    wire.add(side.proxy.bytes_to_server / changed)
                    res.info.setdefault(f"{f}.bytes_from_server.{name}", []).append(side.proxy.bytes_to_client)
                except Exception as exc:  # noqa: BLE001
                    wire.fail(exc)
                    took.fail(exc)
    a_mib, b_mib = sizes["A"] // MiB, sizes["B"] // MiB
    res.row(f"1 MiB overwritten mid-file, {a_mib} MiB file: bytes to server per byte changed",
            "A.wire.cscd", "A.wire.rclone", "rclone", higher_is_better=False)
    res.row(f"10 bytes inserted at the front, {b_mib} MiB file: bytes to server per byte changed",
            "B.wire.cscd", "B.wire.rclone", "rclone", higher_is_better=False)
    res.row("1 MiB overwritten: edit until on the server (s)", "A.time.cscd", "A.time.rclone", "rclone",
            higher_is_better=False)
    res.row("10 bytes inserted: edit until on the server (s)", "B.time.cscd", "B.time.rclone", "rclone",
            higher_is_better=False)
    res.note("a whole-file upload costs file size / bytes changed; a delta upload (DESIGN: fastcdc chunks + "
             "FSCTL_SRV_COPYCHUNK_WRITE) costs about one chunk (avg 1 MiB) per change plus SMB overhead")


# ====================================================================== 7. hashing


def _xxhsum(path: Path) -> str:
    proc = subprocess.run(["xxhsum", "-H2", str(path)], capture_output=True, text=True, check=True, timeout=600)
    return proc.stdout.split()[0]


def _hash_stream(path: Path, slice_bytes: int = 16 * MiB) -> str:
    """xxh3-128 of the whole file, fed as memoryview slices of an mmap (no copies)."""
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        try:
            h = xxhash.xxh3_128()
            for off in range(0, len(view), slice_bytes):
                h.update(view[off : off + slice_bytes])
            return h.hexdigest()
        finally:
            view.release()


def _hash_chunks(path: Path, pool: ThreadPoolExecutor, chunk: int = MiB) -> int:
    """xxh3-128 of each 1 MiB chunk on two threads (xxhash drops the GIL above 64 KiB)."""
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        try:
            half = (len(view) // chunk // 2) * chunk

            def part(lo: int, hi: int) -> int:
                n = 0
                for off in range(lo, hi, chunk):
                    xxhash.xxh3_128_digest(view[off : min(off + chunk, hi)])
                    n += 1
                return n

            futures = [pool.submit(part, 0, half), pool.submit(part, half, len(view))]
            return sum(fut.result() for fut in futures)
        finally:
            view.release()


def _cdc_hash(path: Path) -> int:
    """fastcdc 1.7 boundaries (avg 1 MiB) + xxh3-128 of each chunk, one thread."""
    import mmap

    from fastcdc import fastcdc  # not a cscd dependency: only this row needs it

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        try:
            n = 0
            for c in fastcdc(m, min_size=256 * KiB, avg_size=MiB, max_size=4 * MiB, fat=False):
                xxhash.xxh3_128_digest(view[c.offset : c.offset + c.length])
                n += 1
            return n
        finally:
            view.release()


def _cscd_chunk_file(path: Path) -> int:
    """cscd's own chunker (``cscd.sync.chunker.chunk_file``): boundaries + a digest per chunk."""
    try:
        from cscd.sync.chunker import chunk_file
    except ImportError as exc:
        raise RuntimeError(f"cscd has no chunker to measure: {exc}") from None
    return len(chunk_file(path))


def run_hashing(env: Env, o: Options, res: CaseResult, _state: None) -> None:
    path = env.local / "hash.bin"
    make_file(path, "hash", o.size)
    ours = _hash_stream(path)  # also warms the page cache
    theirs = _xxhsum(path)
    if ours != theirs:
        raise RuntimeError(f"xxh3-128 mismatch: python-xxhash {ours}, xxhsum -H2 {theirs}")

    def timed(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        return o.size / (time.perf_counter() - t0) / GB

    with ThreadPoolExecutor(2) as pool:
        for _ in range(o.repeat):
            res.cell("xxhsum", "GB/s").sample(lambda: timed(lambda: _xxhsum(path)))
            res.cell("stream", "GB/s").sample(lambda: timed(lambda: _hash_stream(path)))
            res.cell("chunks2", "GB/s").sample(lambda: timed(lambda: _hash_chunks(path, pool)))
            res.cell("cdc", "GB/s").sample(lambda: timed(lambda: _cdc_hash(path)))
            res.cell("cscd_chunker", "GB/s").sample(lambda: timed(lambda: _cscd_chunk_file(path)))
    mib = o.size // MiB
    res.row(f"xxh3-128 of a {mib} MiB file, mmap + memoryview slices", "stream", "xxhsum", "xxhsum -H2",
            higher_is_better=True)
    res.row("xxh3-128 per 1 MiB chunk, 2 threads", "chunks2", "xxhsum", "xxhsum -H2", higher_is_better=True)
    res.row("fastcdc (avg 1 MiB) + xxh3-128 per chunk, 1 thread", "cdc", "xxhsum", "xxhsum -H2",
            higher_is_better=True)
    res.row("cscd.sync.chunker.chunk_file (chunk + hash), 1 thread", "cscd_chunker", "xxhsum", "xxhsum -H2",
            higher_is_better=True)
    res.note("page cache warm; xxhsum is timed as a whole CLI run; the digests of python-xxhash and xxhsum are "
             "checked equal. The first three rows measure the library primitives, the last cscd's own chunker")
    path.unlink(missing_ok=True)

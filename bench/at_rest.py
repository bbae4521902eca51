"""Case 13: what the encrypted cache costs (``device.encrypt_cache``, issue 21's "within 10%").

Three more cscd daemons on the run's smbd, each with its cache on an ext4 image of its own,
loop-mounted (``tests/helpers/loop_disk.py``): one with the device policy on an image made with
the ``encrypt`` feature (fscrypt, the key a systemd credential), one with the policy on an image
without it (cscd seals the cache itself: ``cscd.cache.sealing``), one plain. Same folder
content, same steps, the sides taking turns in a rotating order: a file written through the
mount (until ``close``, i.e. into the cache), the same file read back cold from the cache
three times (page cache dropped before each), and twice per repeat 1,000 small files written
while the daemons work offline, the sides taking turns every 100 files, with the daemon's CPU
time for them and, once back online, their uploads. Each large-file step waits until the
server has what the step before wrote, so no side's uploads run while another side is measured. The
ratios are each encrypted cache against the plain one; ≥ 0.9 (higher is better) meets the
goal. While the large file uploads, the bytes the daemon holds in memory copies (``memfd``)
are sampled: a sealed cache's large snapshot is a sealed copy on the disk, not plaintext in
memory. Root only (loop mounts, drop_caches).
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from bench.cases import Options, mbps
from bench.fileio import KiB, MiB, drop_caches, make_bytes, read_file, write_file
from bench.harness import Env
from bench.report import CaseResult
from tests.helpers.daemon import DaemonProcess
from tests.helpers.loop_disk import LoopDisk

KEY_NAME = "cscd-cache-key"
POLICY = f"device:\n  encrypt_cache: true\n  cache_key: 'systemd:{KEY_NAME}'\n  encrypt_with: "
SMALL_FILES = 1000
#: The caches' size limit. Eviction is not what this case measures. At the default (10% of the
#: small image) the large file was evicted after its upload, at times before its cold read,
#: which then came from the server; and the sealed cache, whose 4 KiB files take two disk
#: blocks (header and tag), reached the limit first and evicted inside its timed small-file step.
CACHE_LIMIT = "90%"
#: small-file steps per side and repeat: the step is short and its spread wide, so it gets
#: more samples than the large file
SMALL_ROUNDS = 2
#: files a side writes before the next side's turn in a small-file step
SMALL_BATCH = 100
#: cold reads of each repeat's large file per side: the plain side alone spreads 2.5× on
#: this disk (416-1,044 MB/s), so one read per repeat gave three samples for a 10% question
COLD_READS = 3
#: the share of the machine's CPU time under which it counts as quiet between steps
QUIET_BUSY = 0.15


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> tuple[float, float]:
    """CPU time the whole machine has spent busy and in all, in clock ticks (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


def _quiet(timeout_s: float = 60.0) -> None:
    """Wait until the machine is about idle (under ``QUIET_BUSY`` of its CPUs over half a
    second): what a side left running after its step (the chunk map of its upload, computed
    in a worker process) must not fall on the next side's timed step."""
    deadline = time.monotonic() + timeout_s
    busy0, all0 = _machine_busy()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        busy1, all1 = _machine_busy()
        if all1 > all0 and (busy1 - busy0) / (all1 - all0) < QUIET_BUSY:
            return
        busy0, all0 = busy1, all1


def _daemon(env: Env, disk: LoopDisk, name: str, *, encrypted: bool) -> DaemonProcess:
    assert env.samba is not None
    workdir = env.workdir / f"at-rest-{name}"
    workdir.mkdir()
    (env.samba.share_dir / "bench" / f"at-rest-{name}").mkdir(parents=True, exist_ok=True)
    extra: dict[str, object] = {"cache_limit": CACHE_LIMIT}
    if not env.encryption:
        extra["security"] = {"require_encryption": False}
    daemon = DaemonProcess(workdir, name="cscd", folders={"Documents": env.samba.unc(f"bench\\at-rest-{name}")},
                           credentials=env.samba.write_credentials_file(workdir / "credentials"),
                           port=env.samba.port, cache=disk.mountpoint / "cache", extra=extra)
    policy_dir = workdir / "cscd-policy"
    policy_dir.mkdir()
    if encrypted:
        creds = workdir / "credentials.d"
        creds.mkdir(mode=0o700)
        (creds / KEY_NAME).write_bytes(secrets.token_bytes(64))
        daemon.env["CREDENTIALS_DIRECTORY"] = str(creds)
        (policy_dir / "policy.yaml").write_text(POLICY + ("cscd\n" if name == "sealed" else "fscrypt\n"))
    return daemon


def _memory_copies(pid: int) -> int:
    """Bytes the process holds in memory files (``memfd``: the snapshots of uploads that are
    copies in memory, also a sealed cache's plaintext ones)."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith("/memfd:"):
                total += os.stat(fd).st_size
        except OSError:
            continue  # closed meanwhile
    return total


def _uploaded(env: Env, name: str, files: list[tuple[str, int]], timeout_s: float = 120.0,
              watch: Callable[[], object] | None = None) -> None:
    """Wait until the side's server folder holds ``files`` (relative name, size): each step is
    measured with no upload of an earlier one (of any side) still taking the CPU. ``watch``
    is called at each look meanwhile."""
    assert env.samba is not None
    server = env.samba.share_dir / "bench" / f"at-rest-{name}"
    deadline = time.monotonic() + timeout_s
    while True:
        if watch is not None:
            watch()
        missing = [rel for rel, n in files if not (server / rel).exists() or (server / rel).stat().st_size != n]
        if not missing:
            time.sleep(0.5)  # the upload's last steps (rename, times) after its bytes
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: {len(missing)} files not on the server after {timeout_s:.0f} s")
        time.sleep(0.1)


def _switch(daemon: DaemonProcess, command: str) -> None:
    """``cscd offline`` or ``cscd online``, checked."""
    done = daemon.run_cli(command)
    if done.returncode:
        raise RuntimeError(f"cscd {command}: {done.stderr.strip() or done.stdout.strip()}")


def _small_files_round(env: Env, res: CaseResult, daemons: dict[str, DaemonProcess], sides: dict[str, Path],
                       turn: int, small: bytes, rotated: Callable[[int], list[str]]) -> None:
    """One sample per side of ``SMALL_FILES`` 4 KiB files written into the cache, and the
    daemon's CPU time for them and their uploads.

    The daemons work offline while the files are written (``cscd offline``), and the sides
    take turns every ``SMALL_BATCH`` files: what is measured is the write into the cache, as
    the issue's goal says, not how an upload of the files already closed shares the two
    cores with the writer, and a drift of the machine's speed within the round falls on all
    sides alike. Before, each side wrote its 1,000 files in one go while its uploads ran:
    the same side's samples spread from 1,260 to 1,976 files/s within one run."""
    for name in sides:
        (sides[name] / f"small-{turn}").mkdir()  # online: offline, a folder never listed takes no new name
    view = memoryview(small)
    spent = dict.fromkeys(sides, 0.0)
    pids = {name: daemons[name].pid or 0 for name in sides}
    try:
        for name in sides:
            _switch(daemons[name], "offline")
        _quiet()
        cpu_before = {name: _cpu_seconds(pids[name]) for name in sides}
        for b in range(SMALL_FILES // SMALL_BATCH):
            for name in rotated(turn * (SMALL_FILES // SMALL_BATCH) + b):
                d = sides[name] / f"small-{turn}"
                t0 = time.perf_counter()
                for k in range(b * SMALL_BATCH, (b + 1) * SMALL_BATCH):
                    write_file(d / f"f{k:04d}", view[k * 4 * KiB:(k + 1) * 4 * KiB], fsync=False)
                spent[name] += time.perf_counter() - t0
    finally:
        for name in sides:  # also after a failed write: the next steps need the daemons online
            _switch(daemons[name], "online")
    for name in sides:
        res.cell(f"small.{name}", "files/s").add(SMALL_FILES / spent[name])
    for name in sides:
        _uploaded(env, name, [(f"small-{turn}/f{k:04d}", 4 * KiB) for k in range(SMALL_FILES)])
        # The daemon's CPU time for the files, their uploads included: the uploads of the
        # three sides run at once here, but CPU time is each daemon's own.
        res.cell(f"small_cpu.{name}", "µs/file").add((_cpu_seconds(pids[name]) - cpu_before[name]) / SMALL_FILES * 1e6)


def run_at_rest(env: Env, o: Options, res: CaseResult, _state: None) -> None:
    size = min(o.size, 256 * MiB)  # the images are small; the cost per byte is what counts
    data = make_bytes("at-rest", size)
    small = make_bytes("at-rest-small", SMALL_FILES * 4 * KiB)
    with ExitStack() as stack:
        sides: dict[str, Path] = {}
        daemons: dict[str, DaemonProcess] = {}
        pids: dict[str, int] = {}
        for name, encrypted in (("plain", False), ("encrypted", True), ("sealed", True)):
            disk = stack.enter_context(LoopDisk(env.workdir / f"at-rest-{name}-disk", encrypt=name != "sealed",
                                                size_mib=size // MiB * 2 + 256))
            daemon = _daemon(env, disk, name, encrypted=encrypted)
            stack.callback(daemon.close)
            daemon.start()
            stack.callback(daemon.stop)
            sides[name] = daemon.mount / "Documents"
            daemons[name] = daemon
            assert daemon.proc is not None
            pids[name] = daemon.proc.pid
            res.info[f"protection.{name}"] = daemon.run_cli("status").stdout.count("encrypted at rest")
        names = list(sides)

        def rotated(k: int) -> list[str]:
            """The sides in turn ``k``'s order: each goes first as often as the others, so a
            drift of the machine's speed during a run falls on all of them alike."""
            return names[k % len(names):] + names[:k % len(names)]

        for i in range(o.repeat):
            for name in rotated(i):
                path = sides[name] / f"big-{i}.bin"
                # The write ends with an fsync. Without a sync and a drop of the page cache
                # before it, the third side of each turn wrote at 41-78 MB/s (against 416-674),
                # whichever it was; three ext4 loop images alone show the same (a script:
                # 1,127, 1,021, then 198 MB/s; with the drop: 986-1,318 for all three).
                os.sync()
                drop_caches()
                _quiet()
                res.cell(f"write.{name}", "MB/s").sample(lambda path=path: mbps(size, write_file(path, data)))
                peak = [0]

                def held(name: str = name, peak: list[int] = peak) -> None:
                    peak[0] = max(peak[0], _memory_copies(pids[name]))

                _uploaded(env, name, [(f"big-{i}.bin", size)], watch=held)
                res.cell(f"memory.{name}", "MiB").add(peak[0] / MiB)
            for j in range(COLD_READS):
                for name in rotated(i * COLD_READS + j):
                    path = sides[name] / f"big-{i}.bin"

                    def cold_read(path: Path = path) -> float:
                        drop_caches()
                        _quiet()
                        t, n = read_file(path)
                        if n != size:
                            raise RuntimeError(f"{path}: read {n} bytes, expected {size}")
                        return mbps(n, t)

                    res.cell(f"read.{name}", "MB/s").sample(cold_read)
            for name in names:
                (sides[name] / f"big-{i}.bin").unlink(missing_ok=True)  # room for the next repeat's
            for r in range(SMALL_ROUNDS):
                _small_files_round(env, res, daemons, sides, i * SMALL_ROUNDS + r, small, rotated)
        assert env.samba is not None
        for name in sides:
            shutil.rmtree(env.samba.share_dir / "bench" / f"at-rest-{name}", ignore_errors=True)
    what = f"{size // MiB} MiB"
    for name, how in (("encrypted", "fscrypt"), ("sealed", "sealed by cscd")):
        res.row(f"write {what} into the cache (MB/s), {how}", f"write.{name}", "write.plain",
                "plain cache", higher_is_better=True)
        res.row(f"cold read {what} from the cache (MB/s), {how}", f"read.{name}", "read.plain",
                "plain cache", higher_is_better=True)
        res.row(f"write {SMALL_FILES:,} x 4 KiB working offline (files/s), {how}", f"small.{name}", "small.plain",
                "plain cache", higher_is_better=True)
        res.row(f"daemon CPU per small file, its upload included (µs), {how}", f"small_cpu.{name}",
                "small_cpu.plain", "plain cache", higher_is_better=False)
        res.row(f"memory held by the upload of the {what} file (MiB), {how}", f"memory.{name}", "memory.plain",
                "plain cache", higher_is_better=False)

"""Cases where something else happens while the user works: a large upload, a crashed server.

Owns the ``upload-read`` case (cached-read throughput while cscd uploads a large file: the
GIL question of DESIGN.md, "Processes") and the ``server-loss`` case (smbd killed: the
longest stall of operations on cached data, what an uncached read does, and how long after
smbd's return the files written during the outage reach the server). Probes of a mount run
in daemon threads with a deadline, so a client that wedges in the kernel (state D) is
reported as "still blocked after N s" instead of hanging the benchmark.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.cases import CLIENTS, Options, _hydrate, _need_cold, mbps
from bench.fileio import (
    KiB,
    MiB,
    ServerFile,
    digest_bytes,
    drop_caches,
    make_bytes,
    make_file,
    read_file,
    wait_for,
    write_file,
)
from bench.harness import Env
from bench.report import CaseResult

# ====================================================================== cached reads during an upload


def prepare_upload_read(env: Env, o: Options) -> str:
    return make_file(env.server_dir("cscd") / "upload-read" / "cached.bin", "upload-read", o.size)


def run_upload_read(env: Env, o: Options, res: CaseResult, digest: str) -> None:
    side = env.side("cscd")
    cached = side.root / "upload-read" / "cached.bin"
    _hydrate(cached, digest, o.size)
    # The upload must outlast the read: twice the read, at least 256 MiB.
    big_size = max(2 * o.size, 256 * MiB)
    big = make_bytes("upload-read-big", big_size)
    big_digest = digest_bytes(big)

    def cold_read() -> float:
        _need_cold()
        drop_caches()
        t, n = read_file(cached)
        if n != o.size:
            raise RuntimeError(f"read {n} bytes of {o.size}")
        return mbps(n, t)

    overlapped = []
    for i in range(o.repeat):
        res.cell("idle", "MB/s").sample(cold_read)
        busy = res.cell("busy", "MB/s")
        name = f"big-{i}.bin"
        try:
            side.proxy.reset_counters()
            write_file(side.root / "upload-read" / name, big)  # fsync + close: the upload follows
            _need_cold()
            drop_caches()  # now, so that the drop does not interrupt the timed read
            wait_for(lambda: side.proxy.bytes_to_server > 4 * MiB, 30, "cscd: the upload did not start")
            on_server = ServerFile(side.server / "upload-read" / name, big_size, big_digest)
            t, n = read_file(cached)
            if n != o.size:
                raise RuntimeError(f"read {n} bytes of {o.size}")
            busy.add(mbps(n, t))
            overlapped.append(not on_server())
            wait_for(on_server, o.upload_timeout_s * 2, f"cscd: {name} on the server", interval_s=0.05)
            (side.root / "upload-read" / name).unlink()
        except Exception as exc:  # noqa: BLE001
            busy.fail(exc)
    res.info["upload_still_running_when_read_ended"] = overlapped
    if overlapped and not all(overlapped):
        res.note("in some runs the upload ended before the read did: those samples are partly idle")
    res.row(f"cold cached read of {o.size // MiB} MiB while a {big_size // MiB} MiB upload runs",
            "busy", "idle", "cscd idle", higher_is_better=True)


# ====================================================================== server loss


OUT_BYTES = 4 * KiB
CACHED_BYTES = MiB
OPS = ("stat", "read", "list", "write")


@dataclass
class _Probe:
    """What one mount did during the outage."""

    side: str
    longest: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OPS, 0.0))
    errors: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPS, 0))
    written: list[tuple[str, bytes]] = field(default_factory=list)
    current: tuple[str, float] | None = None
    uncached: tuple[float, str] | None = None  # (seconds, outcome) of the uncached read


def _timed(probe: _Probe, kind: str, fn) -> bool:
    start = time.perf_counter()
    probe.current = (kind, start)
    ok = True
    try:
        fn()
    except OSError as exc:
        probe.errors.setdefault(kind, []).append(os.strerror(exc.errno) if exc.errno else str(exc))
        ok = False
    finally:
        probe.current = None
        probe.longest[kind] = max(probe.longest[kind], time.perf_counter() - start)
        probe.counts[kind] += 1
    return ok


def _probe_cached(probe: _Probe, root: Path, tag: str, window_s: float) -> None:
    d = root / "loss"
    cached = d / "cached.bin"
    end = time.monotonic() + window_s
    next_write = 0.0
    k = 0
    while time.monotonic() < end:
        _timed(probe, "stat", lambda: os.stat(cached))
        _timed(probe, "read", lambda: read_file(cached))
        _timed(probe, "list", lambda: os.listdir(d))
        if time.monotonic() >= next_write:
            name = f"out-{tag}-{k}.bin"
            data = make_bytes(f"loss-{probe.side}-{tag}-{k}", OUT_BYTES)

            def write(name: str = name, data: bytes = data) -> None:
                with open(d / name, "wb") as f:
                    f.write(data)

            if _timed(probe, "write", write):
                probe.written.append((name, data))
            next_write = time.monotonic() + 0.5
            k += 1
        time.sleep(0.02)


def _probe_uncached(probe: _Probe, path: Path) -> None:
    start = time.perf_counter()
    try:
        read_file(path)
        outcome = "read succeeded"
    except OSError as exc:
        outcome = os.strerror(exc.errno) if exc.errno else str(exc)
    probe.uncached = (time.perf_counter() - start, outcome)


def prepare_server_loss(env: Env, o: Options) -> None:
    for name in CLIENTS:
        d = env.server_dir(name) / "loss"
        make_file(d / "cached.bin", "loss-cached", CACHED_BYTES)
        for i in range(o.repeat):
            make_file(d / f"uncached-{i}.bin", f"loss-uncached-{i}", CACHED_BYTES)


def _on_server(server_dir: Path, written: list[tuple[str, bytes]]) -> int:
    done = 0
    for name, data in written:
        try:
            if (server_dir / name).read_bytes() == data:
                done += 1
        except OSError:
            pass
    return done


def run_server_loss(env: Env, o: Options, res: CaseResult, _state: None) -> None:
    assert env.samba is not None
    cached_digest = digest_bytes(make_bytes("loss-cached", CACHED_BYTES))
    ready = []
    for name in CLIENTS:
        try:
            side = env.side(name)
            _hydrate(side.root / "loss" / "cached.bin", cached_digest, CACHED_BYTES)
            os.listdir(side.root / "loss")
            ready.append(name)
        except Exception as exc:  # noqa: BLE001
            for op in OPS:
                res.cell(f"{op}.{name}", "ms").fail(exc)
            for key in ("uncached", "back"):
                res.cell(f"{key}.{name}", "s").fail(exc)
    for i in range(o.repeat):
        time.sleep(1.0)  # both clients idle and online
        probes = {name: _Probe(name) for name in ready}
        threads: list[tuple[_Probe, threading.Thread, str]] = []
        env.samba.kill()
        t_kill = time.perf_counter()
        for name, probe in probes.items():
            root = env.side(name).root
            for what, target, args in (("cached", _probe_cached, (probe, root, str(i), o.loss_window_s)),
                                       ("uncached", _probe_uncached, (probe, root / "loss" / f"uncached-{i}.bin"))):
                t = threading.Thread(target=target, args=args, name=f"probe-{name}-{what}", daemon=True)
                t.start()
                threads.append((probe, t, what))
        # smbd stays down for the probe window, longer only while a probe of cached data is stuck.
        window_end = t_kill + o.loss_window_s
        for probe, t, what in threads:
            if what != "cached":
                continue
            t.join(max(0.0, window_end + o.loss_cap_s - time.perf_counter()))
            if t.is_alive() and probe.current is not None:
                kind, since = probe.current
                stuck = time.perf_counter() - since
                probe.longest[kind] = max(probe.longest[kind], stuck)
                probe.errors.setdefault(kind, []).append(f"still blocked after {stuck:.1f} s")
        uncached: dict[str, tuple[float, str]] = {}
        for probe, t, what in threads:
            if what == "uncached":
                t.join(max(0.0, window_end - time.perf_counter()))
                done = probe.uncached  # the thread may still finish later: take the answer of now
                uncached[probe.side] = done if done is not None else (time.perf_counter() - t_kill, "still blocked")
        env.samba.start()
        t_back = time.perf_counter()
        for name, probe in probes.items():
            for op in OPS:
                c = res.cell(f"{op}.{name}", "ms")
                c.add(probe.longest[op] * 1000)
                for err in sorted(set(probe.errors.get(op, []))):
                    c.fail(f"{op} failed during the outage: {err} ({probe.errors[op].count(err)}x)")
            res.info.setdefault(f"ops_during_outage.{name}", []).append(dict(probe.counts))
            if name in uncached:
                secs, outcome = uncached[name]
                c = res.cell(f"uncached.{name}", "s")
                c.add(secs)
                if outcome == "still blocked":
                    c.fail(f"uncached read still blocked when smbd came back after {secs:.1f} s (a lower bound)")
                res.info.setdefault(f"uncached_read_outcome.{name}", []).append(outcome)
        # Recovery: poll every client until everything it wrote during the outage is on the server.
        pending = {n: p for n, p in probes.items() if p.written}
        first: dict[str, float] = {}
        limit = t_back + 2 * o.loss_cap_s
        while pending and time.perf_counter() < limit:
            for name in list(pending):
                done = _on_server(env.server_dir(name) / "loss", pending[name].written)
                now = time.perf_counter() - t_back
                if done and name not in first:
                    first[name] = now
                if done == len(pending[name].written):
                    res.cell(f"back.{name}", "s").add(now)
                    del pending[name]
            time.sleep(0.05)
        for name in pending:
            res.cell(f"back.{name}", "s").fail(
                f"files written during the outage not all on the server {2 * o.loss_cap_s:.0f} s after smbd returned")
        for name, probe in probes.items():
            if not probe.written:
                res.cell(f"back.{name}", "s").fail("no new file could be written during the outage")
            res.info.setdefault(f"first_upload_after_return_s.{name}", []).append(first.get(name))
    labels = {"stat": "stat of a cached file", "read": "read of a cached 1 MiB file",
              "list": "listing of a listed directory", "write": "create + write 4 KiB + close of a new file"}
    for op in OPS:
        res.row(f"smbd killed, {o.loss_window_s:g} s: longest {labels[op]} (ms)", f"{op}.cscd", f"{op}.rclone",
                "rclone", higher_is_better=False)
    res.row("smbd killed: read of an uncached file, time to answer (s)", "uncached.cscd", "uncached.rclone",
            "rclone", higher_is_better=False)
    res.row("smbd back: until the outage's new files are on the server (s)", "back.cscd", "back.rclone", "rclone",
            higher_is_better=False)
    res.note("smbd stays down for the probe window (longer only while a cached-data probe is stuck, at most "
             f"{o.loss_cap_s:g} s more); an uncached read not answered by then counts as the window length, a lower "
             "bound; info.uncached_read_outcome has the errno")

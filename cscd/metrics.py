"""Performance counters: samples of the services' statistics, rates, status, Prometheus text.

Leaf module: imports only ``cscd.types`` and ``cscd.events``. It never reaches into a
service: the daemon hands it objects that offer ``statistics()`` (a frozen dataclass: the
sync engine, each upstream), the per-folder ``FolderLink`` states and the cache's ``hits`` /
``misses`` attributes, and this module only reads them. Nothing here blocks or awaits: the
cache's disk use comes from ``cache_usage``, a cheap callable the daemon passes in (the cache
measures itself in a thread).

The counters (the Work Folders set, and more):

| metric (Prometheus name without ``cscd_``) | type | labels | source |
|---|---|---|---|
| ``bytes_uploaded_total`` / ``bytes_downloaded_total`` | counter | folder | upstream payload bytes written / read |
| ``requests_total`` | counter | folder | upstream requests (probes included) |
| ``files_uploaded_total``, ``sync_bytes_uploaded_total`` | counter | | sync engine |
| ``deletes_total``, ``renames_total``, ``conflicts_total``, ``dirs_scanned_total`` | counter | | sync engine |
| ``cache_hits_total``, ``cache_misses_total`` | counter | | cache |
| ``hydrations_total`` | counter | | cache misses: each fetches missing ranges from the server |
| ``files_downloaded_total`` | counter | | cache: files a fetch made complete here (swapped-in versions too) |
| ``pending_changes`` | gauge | | sync engine: dirty nodes left after the last push round |
| ``sync_problems`` | gauge | | sync engine: files that keep failing to sync (``sync/problems.py``) |
| ``link_rtt_seconds``, ``folder_online``, ``folder_connected`` | gauge | folder | link monitor, upstream |
| ``last_sync_timestamp_seconds`` | gauge | folder | last push round that succeeded while online |
| ``cache_used_bytes``, ``cache_limit_bytes`` | gauge | | content store (``cache_usage``) |
| ``device_compliant`` | gauge | | 1/0: the screen-lock requirement met (only where the policy sets it) |
| ``*_per_second`` | gauge | as the counter | two samples ``RATE_WINDOW_S`` apart (``cscd stats`` only) |

Prometheus gets the counters and computes rates itself (``rate()``), so the text leaves the
``*_per_second`` gauges out.

In the Prometheus text (prometheus_client's exposition) every sample also carries a ``user``
label, so one node_exporter serves every user of a machine (``cscd stats --all-users DIR``).

Outstanding requests need a counter the upstreams do not keep yet; it is left out rather
than guessed.

``Collector.observe`` also turns what the counters show into sync-session events for
folders that sync at once (online): a session begins when something reaches the server and
ends at the first quiet tick (SYNC_STARTED / SYNC_FINISHED, or SYNC_FAILED when the folder
leaves online first), and a new conflict copy gives CONFLICT_CREATED. Manual and background
sessions are reported by ``begin`` / ``end`` and pause that guessing while they run.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cscd.events import EventId, emit
from cscd.types import FolderLink, Mode

#: Rates are computed over about this many seconds (oldest kept sample within it).
RATE_WINDOW_S = 10.0
#: Counters of the sync engine that show work reaching the server.
_SYNC_WORK = ("files_uploaded_total", "sync_bytes_uploaded_total", "deletes_total",
              "renames_total", "conflicts_total")
#: Modes in which a sync session may run (a manual one at least).
_SYNCING = (Mode.ONLINE, Mode.SLOW_LINK, Mode.ALWAYS_OFFLINE, Mode.METERED)


class HasStatistics(Protocol):
    def statistics(self) -> Any:
        """A frozen dataclass of counters; cheap, never blocks."""


class CacheCounters(Protocol):
    hits: int
    misses: int
    files_downloaded: int


@dataclass(frozen=True)
class Family:
    """One metric family: Prometheus name (without ``cscd_``), type, help, samples."""

    name: str
    type: str
    help: str
    samples: tuple[tuple[tuple[tuple[str, str], ...], float], ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "help": self.help,
                "samples": [{"labels": dict(labels), "value": value}
                            for labels, value in self.samples]}


@dataclass(frozen=True)
class Sample:
    """Counter values at one moment; keys are (metric, folder) with folder ``""`` for totals."""

    t: float
    values: dict[tuple[str, str], float]


_HELP = {
    "bytes_uploaded_total": "Payload bytes written to the server.",
    "bytes_downloaded_total": "Payload bytes read from the server.",
    "requests_total": "Requests sent to the server, probes included.",
    "files_uploaded_total": "Files uploaded by sync.",
    "sync_bytes_uploaded_total": "Bytes of the files uploaded by sync.",
    "deletes_total": "Deletes done on the server by sync.",
    "renames_total": "Renames done on the server by sync.",
    "conflicts_total": "Conflict copies created.",
    "dirs_scanned_total": "Server directory listings by the rescans.",
    "cache_hits_total": "Reads served from the cache alone.",
    "cache_misses_total": "Reads that needed bytes from the server.",
    "hydrations_total": "Fetches of missing file ranges from the server.",
    "files_downloaded_total": "Files whose content a fetch from the server made complete in the cache.",
}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def mode_cause(old: Mode, new: Mode) -> str:
    """Why a mode changed, in the words of the MODE_CHANGED event: user, error, rtt, policy."""
    if Mode.WORKING_OFFLINE in (old, new):
        return "user"
    if Mode.OFFLINE in (old, new):
        return "error"
    if Mode.SLOW_LINK in (old, new):
        return "rtt"
    return "policy"


@dataclass
class _Session:
    trigger: str
    started: float
    base: dict[tuple[str, str], float]
    folders: set[str]


class Collector:
    """Samples counters, computes rates, builds ``status`` and ``stats`` answers.

    ``clock`` is the clock of the sync engine's timestamps (``trio.current_time`` in the
    daemon); ``wall`` turns them into epoch seconds for people.
    """

    def __init__(self, *, links: Mapping[str, FolderLink], sync: HasStatistics,
                 upstreams: Mapping[str, HasStatistics], cache: CacheCounters,
                 targets: Mapping[str, str] | None = None,
                 cache_usage: Callable[[], tuple[int | None, int | None]] | None = None,
                 device_compliance: Callable[[], float | None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.links = links
        self.sync = sync
        self.upstreams = upstreams
        self.cache = cache
        self.targets = dict(targets or {})
        self.clock = clock
        self.wall = wall
        self.cache_usage = cache_usage or (lambda: (None, None))
        self.device_compliance = device_compliance or (lambda: None)
        self.last_sync: dict[str, float] = {}
        self._samples: deque[Sample] = deque()
        self._session: _Session | None = None
        self._busy = 0
        self._last_success: float | None = None
        self._seen: Sample | None = None

    # ---------------------------------------------------------------- sampling

    def _sync_stats(self) -> dict[str, float]:
        stats = self.sync.statistics()
        out = {}
        for f in dataclasses.fields(stats):
            value = _number(getattr(stats, f.name))
            if value is not None:
                out[f.name] = value
        return out

    def sample(self) -> Sample:
        """Read every counter now, keep the sample for rates, and return it."""
        now = self.clock()
        values: dict[tuple[str, str], float] = {}
        for name, up in self.upstreams.items():
            s = up.statistics()
            for metric, attr in (("bytes_uploaded_total", "bytes_written"),
                                 ("bytes_downloaded_total", "bytes_read"),
                                 ("requests_total", "requests")):
                v = float(getattr(s, attr, 0))
                values[(metric, name)] = v
                values[(metric, "")] = values.get((metric, ""), 0.0) + v
            values[("folder_connected", name)] = float(bool(getattr(s, "connected", False)))
        sync = self._sync_stats()
        for key, value in sync.items():
            if key == "pending":
                values[("pending_changes", "")] = value
            elif key == "sync_problems":
                values[("sync_problems", "")] = value
            elif key == "bytes_uploaded":
                values[("sync_bytes_uploaded_total", "")] = value
            elif key != "last_success":
                values[(f"{key}_total", "")] = value
        values[("cache_hits_total", "")] = float(self.cache.hits)
        values[("cache_misses_total", "")] = float(self.cache.misses)
        values[("hydrations_total", "")] = float(self.cache.misses)
        values[("files_downloaded_total", "")] = float(self.cache.files_downloaded)
        sample = Sample(now, values)
        self._samples.append(sample)
        while len(self._samples) > 2 and now - self._samples[1].t >= RATE_WINDOW_S:
            self._samples.popleft()
        return sample

    def rates(self) -> dict[tuple[str, str], float]:
        """Per-second rates of every ``*_total`` counter between the oldest and newest sample."""
        if len(self._samples) < 2:
            return {}
        a, b = self._samples[0], self._samples[-1]
        dt = b.t - a.t
        if dt <= 0:
            return {}
        return {(name[: -len("_total")] + "_per_second", folder): max(0.0, (v - a.values.get((name, folder), 0.0)) / dt)
                for (name, folder), v in b.values.items() if name.endswith("_total")}

    def _to_wall(self, t: float | None) -> float | None:
        return None if t is None else self.wall() - (self.clock() - t)

    # ---------------------------------------------------------------- answers

    def stats(self) -> dict[str, Any]:
        """The ``stats`` answer: every metric family (counters, gauges, rates), JSON-able."""
        sample = self.sample()
        self._update_last_sync(sample)
        fams: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] = {}
        kinds: dict[str, str] = {}

        def add(name: str, kind: str, folder: str, value: float | None) -> None:
            if value is None:
                return
            labels = (("folder", folder),) if folder else ()
            fams.setdefault(name, []).append((labels, value))
            kinds[name] = kind

        # A family has either one unlabelled sample or one per folder, never both: a sum
        # over the folder label must not count the total twice.
        per_folder = {name for name, folder in sample.values if folder}
        per_folder |= {n[: -len("_total")] + "_per_second" for n in per_folder if n.endswith("_total")}
        for (name, folder), value in sorted(sample.values.items()):
            if folder or name not in per_folder:
                add(name, "counter" if name.endswith("_total") else "gauge", folder, value)
        for (name, folder), value in sorted(self.rates().items()):
            if folder or name not in per_folder:
                add(name, "gauge", folder, value)
        for name, link in self.links.items():
            add("link_rtt_seconds", "gauge", name, link.rtt_s)
            add("folder_online", "gauge", name, float(link.mode is Mode.ONLINE))
            add("last_sync_timestamp_seconds", "gauge", name, self.last_sync.get(name))
        used, limit = self.cache_usage()
        add("cache_used_bytes", "gauge", "", None if used is None else float(used))
        add("cache_limit_bytes", "gauge", "", None if limit is None else float(limit))
        add("device_compliant", "gauge", "", self.device_compliance())
        families = [Family(name, kinds[name], _help(name), tuple(samples))
                    for name, samples in fams.items()]
        window = self._samples[-1].t - self._samples[0].t if len(self._samples) > 1 else 0.0
        return {"time": self.wall(), "rate_window_s": window,
                "metrics": [f.to_json() for f in families]}

    def status(self, pending: Mapping[str, tuple[int, int]] | None = None) -> dict[str, Any]:
        """The ``status`` answer: per folder mode and why, RTT, pending, conflicts, last sync.

        ``pending`` maps folder → (changes, bytes) waiting for upload, when the caller can
        count them per folder; otherwise only the engine's total is shown.
        """
        sample = self.sample()
        self._update_last_sync(sample)
        v = sample.values
        used, limit = self.cache_usage()
        folders = {}
        for name, link in self.links.items():
            count, size = (pending or {}).get(name, (None, None))
            folders[name] = {
                "target": self.targets.get(name),
                "mode": link.mode.value,
                "reason": link.reason,
                "since": self._to_wall(link.since) if link.generation else None,
                "rtt_ms": None if link.rtt_s is None else round(link.rtt_s * 1000, 3),
                "connected": bool(v.get(("folder_connected", name), 0)),
                "pending_changes": count,
                "pending_bytes": size,
                "bytes_uploaded": int(v.get(("bytes_uploaded_total", name), 0)),
                "bytes_downloaded": int(v.get(("bytes_downloaded_total", name), 0)),
                "last_sync": self.last_sync.get(name),
            }
        return {
            "folders": folders,
            "sync": {
                "pending_changes": int(v.get(("pending_changes", ""), 0)),
                "files_uploaded": int(v.get(("files_uploaded_total", ""), 0)),
                "files_downloaded": int(v.get(("files_downloaded_total", ""), 0)),
                "conflicts": int(v.get(("conflicts_total", ""), 0)),
                "problems": [dict(p) for p in getattr(self.sync.statistics(), "problems", ())],
            },
            "cache": {"used_bytes": used, "limit_bytes": limit,
                      "hits": int(v.get(("cache_hits_total", ""), 0)),
                      "misses": int(v.get(("cache_misses_total", ""), 0))},
        }

    def _update_last_sync(self, sample: Sample) -> None:
        stats = self.sync.statistics()
        success = getattr(stats, "last_success", None)
        if success is None or success == self._last_success:
            return
        self._last_success = success
        when = self._to_wall(success)
        for name, link in self.links.items():
            if link.mode is Mode.ONLINE and when is not None:
                self.last_sync[name] = when

    # ---------------------------------------------------------------- sessions → events

    def begin(self, folders: Iterable[str], trigger: str) -> _Session:
        """A manual or background session starts: SYNC_STARTED for each folder."""
        self._busy += 1
        sample = self.sample()
        session = _Session(trigger, self.clock(), dict(sample.values), set(folders))
        pending = int(sample.values.get(("pending_changes", ""), 0))
        for folder in sorted(session.folders):
            emit(EventId.SYNC_STARTED, folder=folder, trigger=trigger, pending=pending)
        return session

    def end(self, session: _Session, *, pending: int | None = None, error: str | None = None) -> None:
        """The session ended: SYNC_FINISHED per folder that could sync, SYNC_FAILED otherwise."""
        self._busy = max(0, self._busy - 1)
        sample = self.sample()
        self._report(session, sample, pending, error)
        self._seen = sample

    def _report(self, session: _Session, sample: Sample, pending: int | None, error: str | None) -> None:
        if pending is None:
            pending = int(sample.values.get(("pending_changes", ""), 0))
        now = self.clock()

        def delta(metric: str, folder: str = "") -> int:
            key = (metric, folder)
            return int(sample.values.get(key, 0) - session.base.get(key, 0))

        single = len(session.folders) == 1
        for folder in sorted(session.folders):
            link = self.links.get(folder)
            reason = error
            if reason is None and pending and link is not None and link.mode not in _SYNCING:
                reason = f"{folder} is {link.mode.value}: {link.reason}"
            if reason is not None:
                emit(EventId.SYNC_FAILED, folder=folder, trigger=session.trigger, reason=reason,
                     pending=pending)
                continue
            emit(EventId.SYNC_FINISHED, folder=folder, trigger=session.trigger,
                 files=delta("files_uploaded_total") if single else None,
                 bytes=delta("bytes_uploaded_total", folder), pending=pending,
                 duration_s=round(now - session.started, 3))
            if pending == 0:
                self.last_sync[folder] = self.wall()
        conflicts = delta("conflicts_total")
        if conflicts > 0:
            self._conflicts(session.folders, conflicts)

    def _conflicts(self, folders: Iterable[str], count: int) -> None:
        names = sorted(folders)
        emit(EventId.CONFLICT_CREATED, folder=names[0] if len(names) == 1 else None,
             path=f"{count} file{'s' if count != 1 else ''}", copy="a conflict copy beside it",
             count=count)

    def observe(self) -> None:
        """One tick of the daemon's observer: sample, and report online sync sessions."""
        sample = self.sample()
        self._update_last_sync(sample)
        before, self._seen = self._seen, sample
        if before is None or self._busy:
            return
        worked = any(sample.values.get((k, ""), 0) != before.values.get((k, ""), 0)
                     for k in _SYNC_WORK)
        wrote = {name for name in self.upstreams
                 if sample.values.get(("bytes_uploaded_total", name), 0)
                 != before.values.get(("bytes_uploaded_total", name), 0)}
        session = self._session
        if session is None:
            if not worked and not wrote:
                return
            online = {n for n, link in self.links.items() if link.mode is Mode.ONLINE}
            folders = wrote or (online if len(online) == 1 else set())
            self._session = session = _Session("change", before.t, dict(before.values), set())
            self._join(session, folders, before)
            return
        self._join(session, wrote, before)
        left = {n for n in session.folders if self.links[n].mode is not Mode.ONLINE}
        if (worked or wrote) and not left:
            return  # still busy
        self._session = None
        self._report(session, sample, None, None)

    def _join(self, session: _Session, folders: Iterable[str], before: Sample) -> None:
        for folder in sorted(set(folders) - session.folders):
            session.folders.add(folder)
            emit(EventId.SYNC_STARTED, folder=folder, trigger=session.trigger,
                 pending=int(before.values.get(("pending_changes", ""), 0)))


def _help(name: str) -> str:
    if name in _HELP:
        return _HELP[name]
    if name.endswith("_per_second"):
        base = name[: -len("_per_second")] + "_total"
        return f"Rate of cscd_{base} over the last samples."
    return {
        "pending_changes": "Local changes waiting to be pushed after the last round.",
        "sync_problems": "Files that keep failing to sync (listed by cscd status).",
        "link_rtt_seconds": "Last probe round trip to the folder's server.",
        "folder_online": "1 while the folder is online, else 0 (see cscd status for the mode).",
        "folder_connected": "1 while the folder's server connection is up.",
        "last_sync_timestamp_seconds": "Unix time of the last successful sync while online.",
        "cache_used_bytes": "Disk space used by cached file content.",
        "cache_limit_bytes": "Size limit of the cached content (clean, unpinned content is evicted).",
        "device_compliant": "1 while the session meets device.require_screen_lock, else 0 (only when required).",
    }.get(name, name.replace("_", " ") + ".")


# ---------------------------------------------------------------- Prometheus text format


class _StatsCollector:
    """The ``stats`` answer as prometheus_client metric families, each sample labelled with
    the user. Rates (``*_per_second``) are left out: Prometheus computes them from the
    counters (``rate()``), and a rate sampled by us would be a gauge of the wrong window."""

    def __init__(self, stats: Mapping[str, Any], user: str, prefix: str) -> None:
        self.stats, self.user, self.prefix = stats, user, prefix

    def collect(self):  # type: ignore[no-untyped-def]
        for fam in self.stats.get("metrics", []):
            if fam["name"].endswith("_per_second"):
                continue
            name = self.prefix + fam["name"]
            names = sorted({k for s in fam["samples"] for k in s["labels"]} | {"user"})
            if fam["type"] == "counter":
                family = CounterMetricFamily(name, fam["help"], labels=names)
            else:
                family = GaugeMetricFamily(name, fam["help"], labels=names)
            for sample in fam["samples"]:
                labels = {**{k: "" for k in names}, **{k: str(v) for k, v in sample["labels"].items()},
                          "user": self.user}
                family.add_metric([labels[k] for k in names], float(sample["value"]))
            yield family


def _registry(stats: Mapping[str, Any], user: str, prefix: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(stats, user, prefix))
    return registry


def prometheus(stats: Mapping[str, Any], *, user: str, prefix: str = "cscd_") -> str:
    """The ``stats`` answer in the Prometheus exposition format (node_exporter's textfile)."""
    return generate_latest(_registry(stats, user, prefix)).decode("utf-8")


def write_prometheus_textfile(path: Path, stats: Mapping[str, Any], *, user: str, prefix: str = "cscd_") -> None:
    """Write the ``stats`` answer to ``path`` atomically, for node_exporter's textfile
    collector (prometheus_client writes a temporary file and renames it). Raises OSError."""
    write_to_textfile(str(path), _registry(stats, user, prefix))
    os.chmod(path, 0o644)



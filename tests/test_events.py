"""Events and performance counters: the ID table, the ring, journald's native protocol, rates
and the Prometheus text; and, on a live daemon, events and counters that follow what happens.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cscd import events
from cscd.events import EVENTS, EventId, EventRing, emit, encode_journal, journal_key, render
from cscd.metrics import Collector, mode_cause, prometheus, write_prometheus_textfile
from cscd.types import FolderLink, Mode
from tests.helpers.ops import JournalSocket, decode_journal, wait_control
from tests.helpers.wait import wait_for

# ---------------------------------------------------------------- the table


def test_ids_are_grouped_and_each_has_a_fixed_message_id():
    groups = {1: "DAEMON_", 2: ("SYNC_", "UPLOAD_", "NOT_AVAILABLE"), 3: ("MODE_", "CREDENTIALS_"), 4: "CONFLICT_",
              5: "POLICY_", 6: "PROFILE_", 7: ("CACHE_", "DEVICE_")}
    for event in EventId:
        assert event.name.startswith(groups[event // 1000]) or event.name == "RELOADED", event
    assert set(EVENTS) == set(EventId)
    ids = [spec.message_id for spec in EVENTS.values()]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, uuid.UUID) for i in ids)


def test_stable_numbers():
    """Admins filter on these: changing one is a breaking change."""
    assert (EventId.SYNC_STARTED, EventId.SYNC_FINISHED, EventId.SYNC_FAILED) == (2000, 2001, 2002)
    assert EventId.MODE_CHANGED == 3000 and EventId.CONFLICT_CREATED == 4000
    assert EventId.CREDENTIALS_EXPIRED == 3001  # the link's state, beside the mode changes
    assert EVENTS[EventId.SYNC_FINISHED].message_id.hex == "45e0afa6b6785759bc6cd58bd755d79a"


def test_every_id_is_documented_in_the_module():
    for event in EventId:
        assert f"| {int(event)} | {event.name}" in events.__doc__, event


def test_render_fills_fields_and_survives_missing_ones():
    assert render(EventId.SYNC_STARTED, {"folder": "Documents", "trigger": "manual"}) == \
        "sync of Documents started (manual)"
    assert "?" in render(EventId.CONFLICT_CREATED, {})


def test_emit_keeps_the_event_and_logs_journal_fields(caplog):
    caplog.set_level(logging.INFO, logger="cscd.events")
    event = emit(EventId.MODE_CHANGED, folder="Documents", mode=Mode.OFFLINE, previous="online",
                 reason="gone", cause="error", raw=b"\xffbytes")
    assert event.fields["mode"] == "offline" and event.folder == "Documents"
    assert event.fields["raw"] == "\ufffdbytes"
    assert events.ring.select(after_seq=event.seq - 1)[0] == event
    record = [r for r in caplog.records if getattr(r, "cscd_event", None) == 3000][-1]
    assert record.journal_fields["MESSAGE_ID"] == EVENTS[EventId.MODE_CHANGED].message_id.hex
    assert record.journal_fields["CSCD_FOLDER"] == "Documents"
    assert record.journal_fields["CSCD_CAUSE"] == "error"
    assert record.getMessage().startswith("[3000] mode of Documents changed from online to offline")


def test_ring_is_bounded_and_selectable():
    ring = EventRing(size=5)
    for i in range(12):
        ring.add(lambda seq, i=i: events.Event(seq, 100.0 + i, 1000, "X", "INFO", None, str(i)))
    kept = ring.select()
    assert [e.seq for e in kept] == [8, 9, 10, 11, 12] and ring.last_seq == 12
    assert [e.seq for e in ring.select(after_seq=10)] == [11, 12]
    assert [e.seq for e in ring.select(since=109.5)] == [11, 12]
    assert [e.seq for e in ring.select(limit=2)] == [11, 12]


def test_journal_native_encoding():
    data = encode_journal({"MESSAGE": "two\nlines", "PRIORITY": "6", "CSCD_FOLDER": "Dökuments"})
    assert b"PRIORITY=6\n" in data
    assert decode_journal(data) == {"MESSAGE": "two\nlines", "PRIORITY": "6", "CSCD_FOLDER": "Dökuments"}
    assert journal_key("bytes") == "BYTES" and journal_key("duration-s") == "DURATION_S"
    assert journal_key("_x") == "X" and journal_key("9lives") == "F9LIVES"


# ---------------------------------------------------------------- counters (pure)


@dataclasses.dataclass(frozen=True)
class SyncStats:
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    conflicts: int = 0
    pending: int = 0
    last_success: float | None = None


@dataclasses.dataclass(frozen=True)
class UpStats:
    bytes_read: int = 0
    bytes_written: int = 0
    requests: int = 0
    connected: bool = True


class Service:
    """Something with ``statistics()``, as the daemon's services are."""

    def __init__(self, stats):
        self.stats = stats

    def statistics(self):
        return self.stats


class CacheCounters:
    hits = 0
    misses = 0
    files_downloaded = 0


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def collector():
    clock = Clock()
    sync, up = Service(SyncStats()), Service(UpStats())
    link = FolderLink()
    link.set(Mode.ONLINE, "server answered", clock.now)
    link.rtt_s = 0.002
    c = Collector(links={"Documents": link}, sync=sync, upstreams={"Documents": up}, cache=CacheCounters(),
                  clock=clock, wall=lambda: 1_700_000_000.0 + clock.now,
                  cache_usage=lambda: (4096, 1 << 30))
    return c, clock, sync, up


def test_rates_from_two_samples():
    c, clock, sync, up = collector()
    c.sample()
    clock.now += 2.0
    sync.stats = SyncStats(files_uploaded=4, bytes_uploaded=4000)
    up.stats = UpStats(bytes_written=4100, requests=10)
    c.sample()
    rates = c.rates()
    assert rates[("files_uploaded_per_second", "")] == 2.0
    assert rates[("bytes_uploaded_per_second", "Documents")] == 2050.0
    assert rates[("requests_per_second", "Documents")] == 5.0


def test_prometheus_text_format(tmp_path):
    c, clock, sync, up = collector()
    c.sample()
    clock.now += 1.0
    up.stats = UpStats(bytes_written=10)
    text = prometheus(c.stats(), user="alice")
    families = {f.name: f for f in text_string_to_metric_families(text)}  # prometheus_client's own parser
    uploaded = families["cscd_bytes_uploaded"]
    assert uploaded.type == "counter"
    assert [(s.name, s.labels, s.value) for s in uploaded.samples] == [
        ("cscd_bytes_uploaded_total", {"folder": "Documents", "user": "alice"}, 10.0)]
    assert families["cscd_link_rtt_seconds"].samples[0].value == 0.002
    assert families["cscd_cache_limit_bytes"].samples[0].labels == {"user": "alice"}
    assert not [n for n in families if n.endswith("_per_second")]  # Prometheus rates the counters
    odd = {"metrics": [{"name": "x", "type": "gauge", "help": "h",
                        "samples": [{"labels": {"folder": 'a"b\\c\nd'}, "value": 1.5}]}]}
    (x,) = text_string_to_metric_families(prometheus(odd, user="bob"))
    assert x.samples[0].labels == {"folder": 'a"b\\c\nd', "user": "bob"}
    target = tmp_path / "cscd.prom"
    write_prometheus_textfile(target, c.stats(), user="alice")
    assert target.read_text() == text
    assert os.listdir(tmp_path) == ["cscd.prom"]


def test_status_answer_and_mode_cause():
    c, clock, sync, up = collector()
    status = c.status({"Documents": (2, 300)})
    docs = status["folders"]["Documents"]
    assert (docs["mode"], docs["rtt_ms"], docs["pending_changes"], docs["pending_bytes"]) == ("online", 2.0, 2, 300)
    assert status["cache"]["used_bytes"] == 4096
    assert mode_cause(Mode.ONLINE, Mode.WORKING_OFFLINE) == "user"
    assert mode_cause(Mode.OFFLINE, Mode.ONLINE) == "error"
    assert mode_cause(Mode.ONLINE, Mode.SLOW_LINK) == "rtt"
    assert mode_cause(Mode.ONLINE, Mode.METERED) == "policy"


def test_observer_reports_a_session():
    c, clock, sync, up = collector()
    c.observe()
    start = events.ring.last_seq
    clock.now += 0.5
    sync.stats = SyncStats(files_uploaded=1, bytes_uploaded=5)
    up.stats = UpStats(bytes_written=5)
    c.observe()
    clock.now += 0.5
    c.observe()  # a quiet tick ends the session
    got = [(e.name, e.folder) for e in events.ring.select(after_seq=start)]
    assert got == [("SYNC_STARTED", "Documents"), ("SYNC_FINISHED", "Documents")]
    finished = events.ring.select(after_seq=start)[-1]
    assert finished.fields["files"] == 1 and finished.fields["bytes"] == 5


# ---------------------------------------------------------------- a live daemon


@pytest.fixture
def live(mount_env):
    env = mount_env()
    wait_control(env.daemon)
    return env


def stat_value(env, name, folder=None):
    stats = json.loads(env.daemon.run_cli("stats", "--json").stdout)
    for fam in stats["metrics"]:
        if fam["name"] == name:
            for s in fam["samples"]:
                if s["labels"].get("folder") == folder:
                    return s["value"]
    raise AssertionError(f"no {name} for {folder}")


def event_names(env, since_seq=0):
    answer = json.loads(env.daemon.run_cli("events", "--json").stdout)
    return [(e["name"], e["folder"]) for e in answer["events"] if e["seq"] > since_seq]


def test_an_upload_moves_the_counters_and_emits_sync_finished(live):
    assert stat_value(live, "files_uploaded_total") == 0
    (live.docs / "report.txt").write_bytes(b"r" * 12345)
    wait_for(lambda: (live.server / "report.txt").exists(), 15, "not uploaded")
    wait_for(lambda: stat_value(live, "files_uploaded_total") >= 1, 10, "files_uploaded did not move")
    assert stat_value(live, "sync_bytes_uploaded_total") >= 12345
    assert stat_value(live, "bytes_uploaded_total", "Documents") >= 12345
    wait_for(lambda: ("SYNC_FINISHED", "Documents") in event_names(live), 10, "no SYNC_FINISHED event")
    names = event_names(live)
    assert names.index(("SYNC_STARTED", "Documents")) < names.index(("SYNC_FINISHED", "Documents"))
    assert not live.daemon.warnings()


def test_a_read_moves_hits_and_misses(live):
    (live.server / "remote.bin").write_bytes(b"m" * 50_000)
    assert (live.docs / "remote.bin").read_bytes() == b"m" * 50_000
    wait_for(lambda: stat_value(live, "cache_misses_total") >= 1, 10, "no miss counted")
    assert stat_value(live, "bytes_downloaded_total", "Documents") >= 50_000
    assert stat_value(live, "files_downloaded_total") == 1
    assert (live.docs / "remote.bin").read_bytes() == b"m" * 50_000  # a hit: not downloaded again
    assert stat_value(live, "files_downloaded_total") == 1


@pytest.mark.log_allows(r"folder Documents is now offline: ")
def test_mode_changes_are_events(live):
    before = json.loads(live.daemon.run_cli("events", "--json").stdout)["last_seq"]
    live.proxy.stop_listening()
    live.proxy.reset()
    wait_for(lambda: ("MODE_CHANGED", "Documents") in event_names(live, before), 15, "no MODE_CHANGED")
    live.proxy.resume_listening()
    wait_for(lambda: sum(n == ("MODE_CHANGED", "Documents") for n in event_names(live, before)) >= 2, 15,
             "no MODE_CHANGED back to online")
    answer = json.loads(live.daemon.run_cli("events", "--json").stdout)
    changes = [e for e in answer["events"] if e["seq"] > before and e["name"] == "MODE_CHANGED"]
    assert (changes[0]["fields"]["previous"], changes[0]["fields"]["mode"]) == ("online", "offline")
    assert changes[0]["fields"]["cause"] == "error"
    assert changes[-1]["fields"]["mode"] == "online"


def test_events_reach_journald_with_structured_fields(mount_env, tmp_path):
    """Under systemd (stderr is the journal stream) every record goes to journald natively."""
    journal = JournalSocket(tmp_path / "journal.sock")
    env = mount_env(start=False)
    try:
        env.daemon.log_path.touch()
        st = os.stat(env.daemon.log_path)  # the daemon's stderr is this file: call it the journal
        env.daemon.env.update(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}",
                              CSCD_JOURNAL_SOCKET=str(journal.path))
        env.start_daemon()
        wait_control(env.daemon)
        (env.docs / "j.txt").write_text("journal")

        def finished():
            return [e for e in journal.collect() if e.get("CSCD_EVENT") == "2001"]

        entry = wait_for(finished, 15, "no SYNC_FINISHED entry in the journal")[0]
        assert entry["MESSAGE_ID"] == EVENTS[EventId.SYNC_FINISHED].message_id.hex
        assert entry["CSCD_FOLDER"] == "Documents" and entry["CSCD_EVENT_NAME"] == "SYNC_FINISHED"
        assert entry["PRIORITY"] == "6" and entry["SYSLOG_IDENTIFIER"] == "cscd"
        assert entry["CSCD_FILES"] == "1"
        ready = [e for e in journal.entries if e.get("CSCD_EVENT") == "1000"]
        assert ready and "serves" in ready[0]["MESSAGE"]
        plain = [e for e in journal.entries if e.get("LOGGER") == "cscd.daemon"]
        assert plain and "MESSAGE_ID" not in plain[0]  # ordinary log records go there too
        assert "[2001]" not in env.daemon.log_text()  # and not twice through stderr
    finally:
        try:
            env.daemon.stop()  # before its journal goes away
        finally:
            journal.close()

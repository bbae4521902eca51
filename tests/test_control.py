"""The control socket and the ``cscd`` commands against a live daemon.

A real daemon on the session smbd (``mount_env``); the commands run as ``python -m cscd …
--config CONFIG --json`` subprocesses and their JSON is parsed. The socket's guards are
attacked with raw bytes and from another uid (a child process that runs as ``nobody``).
"""

from __future__ import annotations

import json
import os
import pwd
import queue
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from cscd.control import MAX_CONNECTIONS, MAX_LINE_BYTES
from tests.helpers.daemon import REPO_ROOT, run_cscd
from tests.helpers.ops import control_path, wait_control
from tests.helpers.wait import eventually, wait_for


@pytest.fixture
def live(mount_env):
    """A started daemon whose control socket answers; ``mount_env`` fails the test on any
    warning in its log."""
    env = mount_env()
    wait_control(env.daemon)
    return env


def cli(env, *args, code=0, timeout_s=60):
    result = env.daemon.run_cli(*args, "--json", timeout_s=timeout_s)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


class Raw:
    """A raw connection to the control socket, for requests the client would never send."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> dict:
        line = self.file.readline()
        assert line.endswith(b"\n"), f"no reply line (got {line!r})"
        return json.loads(line)

    def ask(self, data: bytes) -> dict:
        self.send(data)
        return self.reply()

    def closed(self) -> bool:
        return self.file.readline() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def request(cmd, v=1, req_id=1, **args):
    return json.dumps({"v": v, "id": req_id, "cmd": cmd, "args": args}).encode() + b"\n"


# ---------------------------------------------------------------- the socket


def test_socket_is_private(live):
    path = control_path(live.daemon)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


NOBODY_CLIENT = r"""
import json, os, socket, sys
fd = int(sys.argv[1])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    # /proc/self/fd/N: the socket's directory, opened by the parent; skips the 0700 dirs above it
    s.connect(f"/proc/self/fd/{fd}/control.sock")
except OSError as exc:
    print(json.dumps({"connect_errno": exc.errno}))
    sys.exit(0)
f = s.makefile("rb")
try:
    s.sendall(b'{"v":1,"id":1,"cmd":"status","args":{}}\n')
except OSError:
    pass
lines = [json.loads(x) for x in f]
print(json.dumps({"uid": os.getuid(), "replies": lines}))
"""


def as_nobody(path):
    """Connect to the socket as uid/gid 65534 from a child process; return what it saw."""
    dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        result = subprocess.run(["/usr/bin/python3", "-c", NOBODY_CLIENT, str(dirfd)], pass_fds=(dirfd,),
                                user=65534, group=65534, extra_groups=[], capture_output=True, text=True,
                                timeout=30, check=False)
    finally:
        os.close(dirfd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_other_uid_is_kept_out_by_permissions(live):
    seen = as_nobody(control_path(live.daemon))
    assert seen == {"connect_errno": 13}  # EACCES: the 0700 directory and the 0600 socket


def test_other_uid_is_refused_by_peer_credentials(live):
    """Even through a loosened socket, a uid that is not the owner (nor root) is refused."""
    path = control_path(live.daemon)
    dir_mode = stat.S_IMODE(os.stat(path.parent).st_mode)
    os.chmod(path.parent, 0o711)
    os.chmod(path, 0o666)
    try:
        seen = as_nobody(path)
    finally:
        os.chmod(path, 0o600)
        os.chmod(path.parent, dir_mode)
    assert seen["uid"] == 65534
    assert len(seen["replies"]) == 1, seen  # one error reply, then the daemon closed the connection
    reply = seen["replies"][0]
    assert reply["ok"] is False and reply["error"]["code"] == "permission_denied", reply
    assert "uid 65534" in reply["error"]["message"]
    assert "refused a connection from uid 65534" in live.daemon.log_text()
    assert cli(live, "status")["folders"]["Documents"]["mode"] == "online"


@pytest.mark.parametrize(("data", "code"), [
    (b"not json at all\n", "bad_request"),
    (b"\xff\xfe\x00garbage\n", "bad_request"),
    (b"[1, 2, 3]\n", "bad_request"),
    (b'{"v": 1, "id": 5, "cmd": 42}\n', "bad_request"),
    (b'{"v": 1, "id": {"x": 1}, "cmd": "status"}\n', "bad_request"),
    (b'{"v": 1, "id": 5, "cmd": "status", "args": [1]}\n', "bad_request"),
    (b'{"v": 2, "id": 5, "cmd": "status", "args": {}}\n', "unsupported_version"),
    (b'{"id": 5, "cmd": "status"}\n', "unsupported_version"),
    (b'{"v": 1, "id": 5, "cmd": "rm -rf /", "args": {}}\n', "unknown_command"),
    (b'{"v": 1, "id": 5, "cmd": "events", "args": {"limit": "many"}}\n', "invalid_argument"),
    (b'{"v": 1, "id": 5, "cmd": "sync", "args": {"path": "/etc/passwd"}}\n', "invalid_argument"),
])
def test_malformed_request_gets_an_error_reply(live, data, code):
    conn = Raw(control_path(live.daemon))
    try:
        reply = conn.ask(data)
        assert reply["v"] == 1 and reply["ok"] is False, reply
        assert reply["error"]["code"] == code, reply
        assert reply["error"]["message"]
        if b'"id": 5' in data:
            assert reply["id"] == 5
        # The same connection goes on serving.
        assert conn.ask(request("hello", req_id="after"))["result"]["protocol"] == 1
    finally:
        conn.close()


def test_huge_line_is_refused_and_the_daemon_goes_on(live):
    path = control_path(live.daemon)
    conn = Raw(path)
    try:
        try:
            conn.send(b"x" * (MAX_LINE_BYTES + 4096))
        except BrokenPipeError:
            pass  # the daemon may close before we finish; its reply is still there to read
        reply = conn.reply()
        assert reply["error"]["code"] == "line_too_long", reply
        assert conn.closed()
    finally:
        conn.close()
    half = Raw(path)
    half.send(b'{"v": 1, "cmd": "sta')  # and a client that goes away mid-line
    half.close()
    assert cli(live, "status")["folders"]["Documents"]["mode"] == "online"


def test_too_many_connections_are_told_to_wait(live):
    path = control_path(live.daemon)
    conns = []
    try:
        busy = 0
        for _ in range(MAX_CONNECTIONS + 3):
            conns.append(conn := Raw(path))
            reply = conn.ask(request("hello"))
            busy += not reply["ok"] and reply["error"]["code"] == "busy"
        assert busy == 3
    finally:
        for conn in conns:
            conn.close()
    wait_for(lambda: cli(live, "status")["sync"] is not None, 10, "daemon stopped answering")


def test_not_running_is_a_clear_error(mount_env):
    env = mount_env(start=False)
    result = env.daemon.run_cli("status")
    assert result.returncode == 4, result
    assert "cscd is not running" in result.stderr and "systemctl --user start cscd" in result.stderr
    assert json.loads(env.daemon.run_cli("status", "--json").stdout)["error"]["code"] == "not_running"


# ---------------------------------------------------------------- every command


def test_status(live):
    status = cli(live, "status")
    docs = status["folders"]["Documents"]
    assert docs["mode"] == "online" and docs["reason"]
    assert docs["rtt_ms"] is not None and docs["rtt_ms"] >= 0
    assert docs["target"].endswith("\\Documents")
    assert docs["pending_changes"] == 0 and docs["pending_bytes"] == 0
    assert docs["connected"] is True
    assert status["cache"]["limit_bytes"] > 0
    assert status["pid"] == live.daemon.pid
    text = live.daemon.run_cli("status")
    assert text.returncode == 0 and "Documents: online" in text.stdout


def test_status_counts_pending_changes_while_offline(live):
    assert os.listdir(live.docs) == []  # listed once: now it is cached, and can be written offline
    live.daemon.run_cli("offline", "Documents")
    (live.docs / "waiting.txt").write_bytes(b"w" * 1000)
    docs = wait_for(lambda: cli(live, "status")["folders"]["Documents"], 10, "no status")
    assert docs["mode"] == "working_offline"
    assert docs["pending_changes"] >= 1 and docs["pending_bytes"] == 1000
    assert not (live.server / "waiting.txt").exists()
    cli(live, "online")
    wait_for(lambda: (live.server / "waiting.txt").exists(), 15, "not uploaded after online")


def test_offline_and_online(live):
    answer = cli(live, "offline", "Documents")
    assert answer["folders"] == {"Documents": "working_offline"}
    assert cli(live, "status")["folders"]["Documents"]["mode"] == "working_offline"
    assert cli(live, "online")["folders"] == {"Documents": "online"}
    assert cli(live, "offline", "Nope", code=5)["error"]["code"] == "failed"


def test_sync_wait(live):
    (live.docs / "s.txt").write_text("sync me")
    result = cli(live, "sync", str(live.docs), "--wait")
    assert result["folders"] == ["Documents"] and result["pending"] == 0
    assert (live.server / "s.txt").read_text() == "sync me"
    assert result["duration_s"] >= 0
    plain = live.daemon.run_cli("sync", "--wait")
    assert plain.returncode == 0 and "sync: finished" in plain.stdout


def test_sync_without_wait_and_while_working_offline(live):
    assert cli(live, "sync")["started"] is True
    assert os.listdir(live.docs) == []
    cli(live, "offline")
    (live.docs / "later.txt").write_text("later")
    result = cli(live, "sync", "--wait", code=7)
    assert result["pending"] >= 1 and "Documents" in result["skipped"]
    cli(live, "online")


def test_sync_path_outside_the_mount(live):
    assert cli(live, "sync", "/etc", code=2)["error"]["code"] == "invalid_argument"


def test_events_and_since(live):
    answer = cli(live, "events")
    names = [e["name"] for e in answer["events"]]
    assert "DAEMON_READY" in names and answer["last_seq"] >= 1
    assert cli(live, "events", "--since", "1h")["events"]
    assert cli(live, "events", "--since", "2000-01-01 00:00", "--limit", "1")["events"][0]["seq"] == answer["last_seq"]
    bad = live.daemon.run_cli("events", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_events_follow(live):
    proc = subprocess.Popen([sys.executable, "-m", "cscd", "events", "--follow", "--json",
                             "--config", str(live.daemon.config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + 20
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()

    def next_event() -> dict:
        try:
            return json.loads(lines.get(timeout=max(0.01, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError("cscd events --follow printed nothing more in time") from None

    try:
        assert next_event()["name"] == "DAEMON_READY"
        time.sleep(0.3)  # let the follower's long poll start
        (live.docs / "followed.txt").write_text("x")
        while (event := next_event())["name"] != "SYNC_FINISHED":
            pass
        assert event["folder"] == "Documents"
    finally:
        proc.terminate()
        proc.wait(10)


def test_stats_json_and_prometheus(live, tmp_path):
    stats = cli(live, "stats")
    names = {m["name"] for m in stats["metrics"]}
    assert {"bytes_uploaded_total", "files_uploaded_total", "cache_hits_total", "link_rtt_seconds",
            "pending_changes"} <= names
    text = live.daemon.run_cli("stats", "--prometheus")
    assert text.returncode == 0
    assert "# TYPE cscd_files_uploaded_total counter" in text.stdout
    assert 'cscd_bytes_uploaded_total{folder="Documents",user="root"}' in text.stdout
    target = tmp_path / "cscd.prom"
    assert live.daemon.run_cli("stats", "--textfile", str(target)).returncode == 0
    assert "cscd_requests_total" in target.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".cscd.prom")] == []


def test_reload(live):
    answer = cli(live, "reload")
    assert answer["reloaded"] is True and answer["message"] == "policy reloaded: nothing changed"
    assert any(e["name"] == "RELOADED" for e in cli(live, "events")["events"])


def test_policy_show_without_policy_files_gives_defaults(live):
    shown = cli(live, "policy", "show")
    assert shown["files"] == [] and shown["is_primary_computer"] is True
    assert {r["origin"] for r in shown["rows"]} == {"default"}
    plain = live.daemon.run_cli("policy", "show")
    assert plain.returncode == 0 and "every key has its default" in plain.stdout


@pytest.mark.parametrize("action", ["logon", "logoff"])
def test_profile_without_a_roaming_profile_says_why(live, action):
    error = cli(live, "profile", action, code=5)["error"]
    assert error["code"] == "not_configured"
    assert "no roaming profile here" in error["message"] and "roaming_profile.target" in error["message"]
    plain = live.daemon.run_cli("profile", action)
    assert plain.returncode == 5 and "roaming_profile.target" in plain.stderr


def test_root_collects_every_users_counters(mount_env, tmp_path):
    """``cscd stats --all-users DIR`` (root's cscd-metrics.timer): one textfile per user whose
    daemon listens under /run/user/UID/cscd/, labelled with the user; a stale one goes."""
    from prometheus_client.parser import text_string_to_metric_families

    run = tmp_path / "run"
    runtime = run / str(os.getuid())
    runtime.mkdir(parents=True, mode=0o700)
    env = mount_env(start=False)
    env.daemon.env["XDG_RUNTIME_DIR"] = str(runtime)
    env.start_daemon()
    out = tmp_path / "textfiles"
    out.mkdir()
    (out / "cscd-gone.prom").write_text("# a user whose daemon stopped\n")
    eventually(lambda: list(runtime.glob("cscd/*.sock")), 10, "no socket under the runtime directory")
    result = run_cscd("stats", "--all-users", str(out), env_extra={"CSCD_RUN_USER_ROOT": str(run)})
    assert result.returncode == 0, result.stderr
    user = pwd.getpwuid(os.getuid()).pw_name
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 1 and files[0].startswith(f"cscd-{user}"), files
    families = {f.name: f for f in text_string_to_metric_families((out / files[0]).read_text())}
    assert families["cscd_requests"].type == "counter"
    assert {s.labels["user"] for s in families["cscd_requests"].samples} == {user}

"""The Windows 7 trap: a user with rights on \\\\server\\share\\dir1\\dir2 but none on the share
root or dir1 must stay online and sync (cscd probes the redirected path itself)."""

from __future__ import annotations

import os
import pwd

import pytest
import trio

from cscd.errors import AccessDenied
from cscd.policy.credentials import load_credentials
from cscd.policy.unc import parse_unc
from cscd.samba import EmbeddedSamba
from cscd.upstream.smb import SmbUpstream
from tests.helpers.daemon import DaemonProcess, write_credentials
from tests.helpers.wait import wait_for

USER = "nobody"


@pytest.fixture
def limited_smbd(tmp_path):
    server = EmbeddedSamba(tmp_path / "smbd", username=USER)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_deep_folder_without_rights_above_stays_online_and_syncs(limited_smbd, tmp_path):
    nobody = pwd.getpwnam(USER)
    root = limited_smbd.share_dir
    dir2 = root / "dir1" / "dir2"
    dir2.mkdir(parents=True)
    # smbd works as the user: it must be able to traverse the temp dirs above the share.
    for parent in root.parents:
        mode = os.stat(parent).st_mode
        if not mode & 0o001:
            os.chmod(parent, (mode & 0o7777) | 0o001)
    os.chown(root, 0, 0)
    os.chmod(root, 0o711)
    os.chown(root / "dir1", 0, 0)
    os.chmod(root / "dir1", 0o711)
    os.chown(dir2, nobody.pw_uid, nobody.pw_gid)
    os.chmod(dir2, 0o700)
    (dir2 / "existing.txt").write_text("on the server")
    os.chown(dir2 / "existing.txt", nobody.pw_uid, nobody.pw_gid)

    creds = write_credentials(tmp_path / "creds", limited_smbd.username, limited_smbd.password)
    assert root_is_closed_to_the_user(limited_smbd, creds), "layout is not permission-limited"
    with DaemonProcess(tmp_path / "client", folders={"Documents": limited_smbd.unc("dir1\\dir2")},
                       credentials=creds, port=limited_smbd.port,
                       extra={"timings": {"probe_interval_s": 0.3, "upload_delay_s": 0.1}}) as daemon:
        daemon.start()
        docs = daemon.mount / "Documents"
        assert (docs / "existing.txt").read_text() == "on the server"
        (docs / "new.txt").write_text("from the client")
        wait_for(lambda: (dir2 / "new.txt").exists(), 10, "not uploaded into dir1\\dir2")
        # Several probe rounds later it is still online: no probe touched the share root.
        wait_for(lambda: daemon.log_text().count("server answered") >= 1, 5, "no probe")
        lines = [line for line in daemon.log_text().splitlines() if "is now" in line]
        assert lines and all("online" in line for line in lines), lines
        daemon.stop()


def root_is_closed_to_the_user(server: EmbeddedSamba, creds_path) -> bool:
    """An independent client as the same user cannot list the share root or dir1."""
    async def check() -> bool:
        denied = 0
        for unc in (server.unc(""), server.unc("dir1")):
            up = SmbUpstream(parse_unc(unc), load_credentials(creds_path), port=server.port, timeout_s=5)
            try:
                await up.connect()
                await up.list_dir(b"")
            except AccessDenied:
                denied += 1
            finally:
                await up.close()
        return denied == 2

    return trio.run(check)

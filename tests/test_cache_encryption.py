"""The cache encrypted at rest (issue 21 part 1): ``device.encrypt_cache``, with the kernel's fscrypt or sealed by cscd.

Real parts: the cache on a real ext4 in a loop-mounted image (``tests/helpers/loop_disk.py``),
the real daemon and mount, the real smbd, the key a systemd credential
(``$CREDENTIALS_DIRECTORY``). The judge is the raw image — what someone who takes the disk
reads: after the daemon stops, no file content and no file name of the folder is found in
it, while a plain file written beside the cache is (so the scan can find things). A plain
cache is encrypted in place when the policy comes, its plain blocks overwritten. On a file
system that cannot encrypt, cscd seals the cache itself (``cscd.cache.sealing``) and the same
scan judges it; without any key the folders are online only, and it says why.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import uuid
from pathlib import Path

import pytest

from cscd.cache import fscrypt
from cscd.cache.sealing import Sealer
from cscd.cache.store import ContentStore
from tests.helpers.daemon import run_cscd
from tests.helpers.loop_disk import LoopDisk
from tests.helpers.mount_env import MountEnv
from tests.helpers.ops import cli_json
from tests.helpers.wait import eventually

KEY_NAME = "cscd-cache-key"
POLICY = f"device:\n  encrypt_cache: true\n  cache_key: 'systemd:{KEY_NAME}'\n"
#: the kernel's encryption and nothing else, also where its AES is the portable code (this VM)
FSCRYPT_POLICY = POLICY + "  encrypt_with: fscrypt\n"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="loop-mounting an ext4 image needs root"),
    # the daemon reports what it cannot do at WARNING: online only, the locked cache
    pytest.mark.log_allows(r"\[7001\]", r"is now offline",
                           # a kernel without its AES module (this CI's VM): said once, at WARNING
                           r"encrypts the cache with its portable AES code"),
]


@pytest.fixture
def disk(tmp_path: Path):
    with LoopDisk(tmp_path, encrypt=True) as d:
        yield d


def key_dir(tmp_path: Path) -> tuple[Path, bytes]:
    creds = tmp_path / "credentials.d"
    creds.mkdir(mode=0o700)
    key = secrets.token_bytes(fscrypt.KEY_BYTES)
    (creds / KEY_NAME).write_bytes(key)
    return creds, key


def encrypted_env(mount_env, disk: LoopDisk, creds: Path, *, policy: str | None = FSCRYPT_POLICY) -> MountEnv:
    env = mount_env(start=False)
    env.daemon.cache = disk.mountpoint / "cache"
    env.daemon.env["CREDENTIALS_DIRECTORY"] = str(creds)
    policy_dir = env.daemon.workdir / "cscd-policy"
    policy_dir.mkdir(exist_ok=True)
    if policy:
        (policy_dir / "policy.yaml").write_text(policy)
    return env


def marker(what: str) -> bytes:
    return f"{what}-{uuid.uuid4().hex}".encode()


def secrets_to_find(env: MountEnv, disk: LoopDisk) -> tuple[bytes, bytes, str, bytes]:
    """What a raw scan of the disk must not find (the server's ``report.txt``, the content to
    write and the name to write it under) and, beside the cache, plain bytes it must find."""
    from_server, written = marker("server-content") * 50, marker("written-here") * 50
    secret_name = marker("secret-name").decode() + ".txt"
    (env.server / "report.txt").write_bytes(from_server)
    plain_beside = marker("plain-beside-the-cache")
    (disk.mountpoint / "not-the-cache.txt").write_bytes(plain_beside * 4)
    return from_server, written, secret_name, plain_beside


def assert_served_offline(env: MountEnv, files: dict[str, bytes]) -> None:
    """With the server out of reach, each file reads back from the cache as ``files`` says."""
    env.proxy.stop_listening()
    env.proxy.reset()
    eventually(lambda: cli_json(env.daemon, "status")["folders"]["Documents"]["mode"] != "online", 20,
               "the folder did not go offline")
    for name, content in files.items():
        assert (env.docs / name).read_bytes() == content, f"{name} did not read back from the cache"
    env.proxy.resume_listening()


def unlock_for_the_check(env: MountEnv, key: bytes) -> None:
    """The teardown checks the cache the daemon left (``disk`` comes before ``mount_env`` in
    each test's arguments, so it is still mounted then); the daemon took its key back at stop."""
    fscrypt.add_key(env.daemon.cache, key)


def test_the_kernel_cipher_in_use_is_the_fastest_it_lists(tmp_path: Path) -> None:
    """``/proc/crypto`` lists every xts(aes) the kernel has; fscrypt takes the highest priority."""
    listing = tmp_path / "crypto"
    listing.write_text(
        "name         : xts(aes)\ndriver       : xts(ecb(aes-fixed-time))\npriority     : 101\n\n"
        "name         : sha256\ndriver       : sha256-avx2\npriority     : 170\n\n"
        "name         : xts(aes)\ndriver       : xts-aes-vaes-avx2\npriority     : 600\n\n")
    assert fscrypt.contents_cipher_driver(listing) == "xts-aes-vaes-avx2"
    assert not fscrypt.is_generic_driver("xts-aes-vaes-avx2")
    assert fscrypt.is_generic_driver("xts(ecb(aes-fixed-time))")
    assert fscrypt.contents_cipher_driver(tmp_path / "absent") == ""


def test_an_encrypted_cache_leaves_no_content_and_no_name_on_the_disk(disk, mount_env, tmp_path) -> None:
    creds, key = key_dir(tmp_path)
    env = encrypted_env(mount_env, disk, creds)
    from_server, written, secret_name, plain_beside = secrets_to_find(env, disk)

    env.start_daemon()
    assert (env.docs / "report.txt").read_bytes() == from_server  # now cached
    (env.docs / secret_name).write_bytes(written)
    eventually(lambda: (env.server / secret_name).exists(), 20, "the new file never reached the server")
    status = cli_json(env.daemon, "status")
    assert status["cache"]["protection"]["state"] == "encrypted", status["cache"]
    assert "[7000]" in env.daemon.log_text()
    human = env.daemon.run_cli("status").stdout
    assert "cache protection: encrypted at rest (fscrypt v2" in human, human
    doctor = run_cscd("doctor", "--config", str(env.daemon.config_path), timeout_s=60,
                      env_extra={"CREDENTIALS_DIRECTORY": str(creds)})
    line = next(x for x in doctor.stdout.splitlines() if "cache encryption" in x)
    assert "FAIL" not in line and ("possible" in line), doctor.stdout
    env.daemon.stop()

    # Locked: the names are garbled and the content is out of reach.
    index, content = env.daemon.cache / "index", env.daemon.cache / "content"
    identifier = fscrypt.policy_key(content)
    assert identifier is not None and fscrypt.policy_key(index) == identifier
    assert not fscrypt.key_present(env.daemon.cache, identifier), "the daemon did not take its key back"
    assert "data.mdb" not in os.listdir(index), "LMDB's file name is readable"
    with pytest.raises(OSError) as exc:
        (index / os.listdir(index)[0]).read_bytes()
    assert exc.value.errno == errno.ENOKEY
    # The disk itself: nothing of the folder, while plain data beside the cache is there to find.
    assert disk.raw_contains(plain_beside), "the scan cannot find plain data: it proves nothing"
    for needle, what in ((from_server[:40], "cached content"), (written[:40], "written content"),
                         (secret_name.encode(), "a file name (the index holds names)")):
        assert not disk.raw_contains(needle), f"{what} is on the disk in the clear"

    # Next start: the key comes back with the session, and the cache serves offline.
    env.start_daemon()
    assert_served_offline(env, {"report.txt": from_server, secret_name: written})
    env.daemon.stop()
    unlock_for_the_check(env, key)


def test_a_plain_cache_is_encrypted_in_place_and_its_plain_blocks_overwritten(disk, mount_env, tmp_path) -> None:
    creds, key = key_dir(tmp_path)
    env = encrypted_env(mount_env, disk, creds, policy=None)
    before = marker("cached-before-the-policy") * 64
    (env.server / "old.txt").write_bytes(before)
    env.start_daemon()
    assert (env.docs / "old.txt").read_bytes() == before
    env.daemon.stop()
    assert disk.raw_contains(before[:40]), "without the policy the cache is plain (the scan's control)"

    (env.daemon.workdir / "cscd-policy" / "policy.yaml").write_text(FSCRYPT_POLICY)
    env.start_daemon()
    assert cli_json(env.daemon, "status")["cache"]["protection"]["state"] == "encrypted"
    assert_served_offline(env, {"old.txt": before})  # the cached copy survived the move
    env.daemon.stop()
    assert not disk.raw_contains(before[:40]), "the plain copy's blocks still hold the content"
    assert not any(p.name.endswith((".plain", ".encrypting")) for p in env.daemon.cache.iterdir())
    unlock_for_the_check(env, key)


def test_without_its_key_an_encrypted_cache_is_not_opened_and_not_touched(disk, mount_env, tmp_path) -> None:
    creds, key = key_dir(tmp_path)
    env = encrypted_env(mount_env, disk, creds)
    env.start_daemon()
    (env.docs / "kept.txt").write_text("kept")
    env.daemon.stop()
    (creds / KEY_NAME).unlink()
    env.daemon.start(wait=False)
    assert env.daemon.proc is not None
    assert env.daemon.proc.wait(30) == 4
    log = env.daemon.log_text()
    assert "is encrypted and its key cannot be had" in log and f"systemd:{KEY_NAME}" in log, log[-2000:]
    assert key.hex() not in log and "Traceback" not in log
    (creds / KEY_NAME).write_bytes(key)
    env.start_daemon()
    assert (env.docs / "kept.txt").read_text() == "kept"
    env.daemon.stop()
    unlock_for_the_check(env, key)


def test_a_file_system_without_fscrypt_gets_a_cache_sealed_by_cscd(mount_env, tmp_path) -> None:
    """ext4 without its ``encrypt`` feature (Debian's default): cscd seals the cache itself."""
    creds, key = key_dir(tmp_path)
    with LoopDisk(tmp_path, encrypt=False) as plain_disk:
        env = encrypted_env(mount_env, plain_disk, creds, policy=POLICY)
        env.check_sealer = Sealer(key)
        from_server, written, secret_name, plain_beside = secrets_to_find(env, plain_disk)
        env.start_daemon()
        status = cli_json(env.daemon, "status")
        assert status["cache"]["protection"]["state"] == "sealed", status["cache"]
        assert status["folders"]["Documents"]["cached"] is True
        assert "cache protection: encrypted at rest (sealed by cscd" in env.daemon.run_cli("status").stdout
        assert (env.docs / "report.txt").read_bytes() == from_server  # now cached
        (env.docs / secret_name).write_bytes(written)
        # a database's pattern: a file over several blocks, then a few bytes rewritten in place
        reference = bytearray(os.urandom(300_000))
        (env.docs / "pages.db").write_bytes(reference)
        with open(env.docs / "pages.db", "r+b") as f:
            for at in (0, 65_530, 131_072, 299_990):
                f.seek(at)
                f.write(b"0123456789")
                reference[at:at + 10] = b"0123456789"
        assert (env.docs / "pages.db").read_bytes() == reference
        # a large file: its upload reads a sealed copy on the disk through the content key, in
        # the upload and chunking workers; then an edit in place goes up as a delta
        large = bytearray(os.urandom(12 << 20))
        (env.docs / "large.bin").write_bytes(large)
        eventually(lambda: (env.server / "pages.db").exists()
                   and (env.server / "pages.db").read_bytes() == reference
                   and (env.server / "large.bin").exists()
                   and (env.server / "large.bin").read_bytes() == large
                   and (env.server / secret_name).exists(), 60, "the new files never reached the server")
        with open(env.docs / "large.bin", "r+b") as f:
            f.seek(7_000_000)
            f.write(b"an edit in the middle")
        large[7_000_000:7_000_021] = b"an edit in the middle"
        eventually(lambda: (env.server / "large.bin").read_bytes() == large, 60,
                   "the edit of the large file never reached the server")
        doctor = run_cscd("doctor", "--config", str(env.daemon.config_path), timeout_s=60,
                          env_extra={"CREDENTIALS_DIRECTORY": str(creds)})
        line = next(x for x in doctor.stdout.splitlines() if "cache encryption" in x)
        assert "FAIL" not in line and "sealed" in line, doctor.stdout
        env.daemon.stop()

        assert plain_disk.raw_contains(plain_beside), "the scan cannot find plain data: it proves nothing"
        for needle, what in ((from_server[:40], "cached content"), (written[:40], "written content"),
                             (bytes(reference[1000:1040]), "a rewritten file's content"),
                             (bytes(large[9_000_000:9_000_040]), "a large file's content"),
                             (secret_name.encode(), "a file name (the index holds names)")):
            assert not plain_disk.raw_contains(needle), f"{what} is on the disk in the clear"

        env.start_daemon()
        assert_served_offline(env, {"report.txt": from_server, secret_name: written, "pages.db": bytes(reference),
                                    "large.bin": bytes(large)})
        env.daemon.stop()

        (creds / KEY_NAME).write_bytes(secrets.token_bytes(fscrypt.KEY_BYTES))
        env.daemon.start(wait=False)
        assert env.daemon.proc is not None and env.daemon.proc.wait(30) == 4
        assert "is sealed with another key" in env.daemon.log_text()
        env.close()


def test_a_plain_cache_is_sealed_in_place_and_its_plain_blocks_overwritten(mount_env, tmp_path) -> None:
    creds, key = key_dir(tmp_path)
    with LoopDisk(tmp_path, encrypt=False) as plain_disk:
        env = encrypted_env(mount_env, plain_disk, creds, policy=None)
        before = marker("cached-before-the-policy") * 64
        name = marker("named-before-the-policy").decode()
        (env.server / f"{name}.txt").write_bytes(before)
        env.start_daemon()
        assert (env.docs / f"{name}.txt").read_bytes() == before
        env.daemon.stop()
        assert plain_disk.raw_contains(before[:40]), "without the policy the cache is plain (the scan's control)"
        assert plain_disk.raw_contains(name.encode())

        (env.daemon.workdir / "cscd-policy" / "policy.yaml").write_text(POLICY)
        env.check_sealer = Sealer(key)
        env.start_daemon()
        assert cli_json(env.daemon, "status")["cache"]["protection"]["state"] == "sealed"
        assert_served_offline(env, {f"{name}.txt": before})  # the cached copy survived sealing
        env.daemon.stop()
        assert not plain_disk.raw_contains(before[:40]), "the plain copy's blocks still hold the content"
        assert not plain_disk.raw_contains(name.encode()), "the plain index's blocks still hold the name"
        assert not any(p.name.endswith((".plain", ".sealing")) for p in env.daemon.cache.iterdir())
        env.close()


def test_auto_takes_fscrypt_only_where_the_kernel_has_fast_aes(disk, mount_env, tmp_path) -> None:
    """``encrypt_with: auto`` (the default) on a file system that encrypts: fscrypt, unless the
    kernel's AES is its portable code (this VM's), where cscd seals the cache itself."""
    creds, key = key_dir(tmp_path)
    env = encrypted_env(mount_env, disk, creds, policy=POLICY)
    driver = fscrypt.contents_cipher_driver()
    portable = fscrypt.is_generic_driver(driver)
    if portable:
        env.check_sealer = Sealer(key)
    env.start_daemon()
    protection = cli_json(env.daemon, "status")["cache"]["protection"]
    assert protection["state"] == ("sealed" if portable else "encrypted"), (driver, protection)
    (env.docs / "kept.txt").write_text("kept")
    env.daemon.stop()
    assert fscrypt.policy_key(env.daemon.cache / "content") is None if portable else not None
    if not portable:
        unlock_for_the_check(env, key)


def test_fscrypt_only_on_a_file_system_that_cannot_leaves_the_folders_online_only(mount_env, tmp_path) -> None:
    creds, _key = key_dir(tmp_path)
    with LoopDisk(tmp_path, encrypt=False) as plain_disk:
        env = encrypted_env(mount_env, plain_disk, creds)
        env.start_daemon()
        protection = cli_json(env.daemon, "status")["cache"]["protection"]
        assert protection["state"] == "online only", protection
        assert "cannot encrypt" in protection["reason"] and "encrypt_with" in protection["reason"], protection
        env.close()


def test_without_a_key_the_folders_are_served_online_only(mount_env, tmp_path) -> None:
    with LoopDisk(tmp_path, encrypt=False) as plain_disk:
        env = encrypted_env(mount_env, plain_disk, tmp_path / "no-credentials")
        env.start_daemon()
        status = cli_json(env.daemon, "status")
        protection = status["cache"]["protection"]
        assert protection["state"] == "online only", protection
        assert KEY_NAME in protection["reason"], protection
        assert status["folders"]["Documents"]["cached"] is False
        assert "[7001]" in env.daemon.log_text()
        assert "nothing is cached (online only)" in env.daemon.run_cli("status").stdout
        secret = marker("never-cached") * 64
        path = env.docs / "written.txt"
        path.write_bytes(secret)
        assert (env.server / "written.txt").read_bytes() == secret, "not written through at close"
        node_id = os.stat(path).st_ino
        assert not ContentStore(env.daemon.cache / "content").exists(node_id), "the content stayed in the cache"
        doctor = run_cscd("doctor", "--config", str(env.daemon.config_path), timeout_s=60)
        line = next(x for x in doctor.stdout.splitlines() if "cache encryption" in x)
        assert "FAIL" in line and "online only" in line, doctor.stdout
        env.close()


@pytest.mark.skipif(shutil.which("gnome-keyring-daemon") is None, reason="needs gnome-keyring")
def test_the_key_is_made_in_the_session_keyring_and_a_locked_keyring_keeps_the_cache_shut(
        disk, mount_env, tmp_path, keyring) -> None:
    env = encrypted_env(mount_env, disk, tmp_path, policy=None)
    (env.daemon.workdir / "cscd-policy" / "policy.yaml").write_text(
        "device:\n  encrypt_cache: true\n  cache_key: secret-service\n  encrypt_with: fscrypt\n")
    env.daemon.env["DBUS_SESSION_BUS_ADDRESS"] = keyring.address
    env.start_daemon()
    assert cli_json(env.daemon, "status")["cache"]["protection"]["state"] == "encrypted"
    (env.docs / "kept.txt").write_text("kept under the keyring's key")
    env.daemon.stop()
    key = keyring_item(keyring, env.daemon.cache)
    assert len(key) == fscrypt.KEY_BYTES
    env.start_daemon()  # the same key again, from the keyring
    assert (env.docs / "kept.txt").read_text() == "kept under the keyring's key"
    env.daemon.stop()
    keyring.lock()
    env.daemon.start(wait=False)
    assert env.daemon.proc is not None and env.daemon.proc.wait(30) == 4
    assert "the keyring holding the cache's key is locked: unlock the session" in env.daemon.log_text()
    unlock_for_the_check(env, key)


@pytest.mark.skipif(shutil.which("gnome-keyring-daemon") is None, reason="needs gnome-keyring")
def test_a_keyring_that_comes_up_after_the_daemon_starts_is_waited_for(mount_env, tmp_path) -> None:
    """At logon the user's cscd.service may start before PAM has unlocked the keyring (or
    before the Secret Service is on the session bus): cscd waits for it
    (``timings.keyring_wait_s``) rather than leave the cache shut for the whole session."""
    import threading

    from tests.helpers.keyring import Keyring
    from tests.helpers.wait import wait_for

    late = Keyring(tmp_path / "late-keyring", start=False)
    try:
        env = mount_env(start=False, timings={"keyring_wait_s": 40})
        policy = env.daemon.workdir / "cscd-policy"
        policy.mkdir(exist_ok=True)
        (policy / "policy.yaml").write_text(
            "device:\n  encrypt_cache: true\n  cache_key: secret-service\n  encrypt_with: cscd\n")
        env.daemon.env["DBUS_SESSION_BUS_ADDRESS"] = late.address
        failed: list[BaseException] = []

        def logon() -> None:
            try:
                wait_for(lambda: "waiting up to 40 s for the keyring" in env.daemon.log_text(), 20,
                         "the daemon did not say it waits for the keyring")
                late.start()
            except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
                failed.append(exc)

        unlocking = threading.Thread(target=logon)
        unlocking.start()
        env.start_daemon()
        unlocking.join()
        assert not failed, failed
        assert cli_json(env.daemon, "status")["cache"]["protection"]["state"] == "sealed"
        key = keyring_item(late, env.daemon.cache)
        env.check_sealer = Sealer(key)
        (env.docs / "kept.txt").write_text("cached under the keyring's key")
        assert (env.docs / "kept.txt").read_text() == "cached under the keyring's key"
        env.close()
    finally:
        late.close()


def keyring_item(keyring, cache: Path) -> bytes:
    import secretstorage
    from jeepney.io.blocking import open_dbus_connection

    with open_dbus_connection(bus=keyring.address) as conn:
        items = list(secretstorage.search_items(conn, {"application": "cscd-cache-key", "cache": str(cache)}))
        assert len(items) == 1, "cscd made no key item (or more than one) in the keyring"
        return bytes(items[0].get_secret())

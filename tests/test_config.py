"""The daemon's YAML file and credentials: every mistake named by file, line and key."""

import os
import re

import pytest

from cscd.errors import ConfigError
from cscd.policy.config import load_config
from cscd.policy.credentials import load_credentials

GOOD = """\
mount: {tmp}/mnt
cache: {tmp}/cache
credentials: {tmp}/creds
port: 4455
folders:
  Documents: '\\\\127.0.0.1\\share\\alice\\Documents'
"""


def write(tmp_path, text):
    p = tmp_path / "cscd.yaml"
    p.write_text(text.format(tmp=tmp_path))
    return p


def test_minimal_form_loads(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.mount == tmp_path / "mnt"
    assert cfg.port == 4455
    assert [f.name for f in cfg.folders] == ["Documents"]
    assert cfg.folders[0].target.server == "127.0.0.1"
    assert cfg.folders[0].target.path == ("alice", "Documents")
    assert cfg.security.require_encryption and cfg.security.require_signing


@pytest.mark.parametrize(
    "text, line, needle",
    [
        (GOOD + "colour: blue\n", 7, "colour: unknown key"),
        (GOOD.replace("port: 4455", "port: seventy"), 4, "port: expected a whole number"),
        (GOOD.replace("port: 4455", "port: 70000"), 4, "port: expected a whole number"),
        (GOOD.replace("'\\\\127.0.0.1\\share\\alice\\Documents'", "'\\\\evil host\\share'"), 6,
         "folders.Documents: 'evil host' is not a valid host name"),
        (GOOD.replace("'\\\\127.0.0.1\\share\\alice\\Documents'", "'server\\share'"), 6,
         "folders.Documents: 'server\\\\share' is not a UNC path"),
        (GOOD.replace("mount: {tmp}/mnt\n", ""), 1, "mount: missing"),
        (GOOD + "timings:\n  upload_delay_s: fast\n", 8, "timings.upload_delay_s: expected a number"),
        (GOOD + "security:\n  require_encryption: maybe\n", 8, "security.require_encryption: expected true or false"),
        (GOOD + "security:\n  encrypt: true\n", 8, "security.encrypt: unknown key"),
        (GOOD + "port: 1\n", 7, "key 'port' appears twice"),
        ("mount: [unclosed\n", 2, "not valid YAML"),
        (GOOD.replace("folders:\n  Documents: '\\\\127.0.0.1\\share\\alice\\Documents'\n", "folders: {{}}\n"), 5,
         "folders: missing"),
        (GOOD.replace("  Documents:", "  'Docu:ments':"), 6, "not usable as a folder name"),
        (GOOD.replace("credentials: {tmp}/creds", "credentials: [{tmp}/creds, kerberos]"), 3,
         "credentials: a list is [kerberos, FILE, systemd:NAME or secret-service] (the ticket first"),
        (GOOD.replace("credentials: {tmp}/creds", "credentials: [kerberos, kerberos]"), 3, "credentials: a list is"),
        (GOOD.replace("credentials: {tmp}/creds", "credentials: []"), 3, "credentials: expected kerberos, a file"),
        (GOOD.replace("credentials: {tmp}/creds", "credentials: systemd:a/b"), 3, "expected systemd:NAME"),
    ],
)
def test_bad_config_names_file_line_key(tmp_path, text, line, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}:{line}:") or (needle == "not valid YAML" and msg.startswith(f"{p}:")), msg
    assert re.search(re.escape(needle), msg), msg


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.yaml")


def test_credentials_must_be_private(tmp_path):
    p = tmp_path / "creds"
    p.write_text("username=alice\npassword=s3cret\n")
    os.chmod(p, 0o644)
    with pytest.raises(ConfigError) as info:
        load_credentials(p)
    assert "chmod 600" in str(info.value)
    assert "s3cret" not in str(info.value)
    os.chmod(p, 0o600)
    creds = load_credentials(p)
    assert creds.username == "alice" and creds.password == "s3cret"
    assert "s3cret" not in repr(creds)


@pytest.mark.parametrize(
    "text, needle",
    [("password=x\n", "no username"), ("username=a\n", "no password"), ("user=a\nsecret=x\n", ":2: expected")],
)
def test_bad_credentials(tmp_path, text, needle):
    p = tmp_path / "creds"
    p.write_text(text)
    os.chmod(p, 0o600)
    with pytest.raises(ConfigError, match=needle):
        load_credentials(p)


def test_missing_credentials_file(tmp_path):
    with pytest.raises(ConfigError, match="credentials file not found"):
        load_credentials(tmp_path / "none")


def test_policy_dir_and_home_default_to_etc_cscd_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "someone"))
    cfg = load_config(write(tmp_path, GOOD))
    assert str(cfg.policy_dir) == "/etc/cscd"
    assert cfg.home is None and cfg.home_dir == tmp_path / "someone"


def test_policy_dir_lets_the_policy_give_the_folders(tmp_path):
    text = GOOD.replace("folders:\n  Documents: '\\\\127.0.0.1\\share\\alice\\Documents'\n",
                        "policy_dir: policy\nhome: {tmp}/home\n")
    cfg = load_config(write(tmp_path, text))
    assert cfg.folders == ()
    assert cfg.policy_dir == tmp_path / "policy"  # relative to the file
    assert cfg.home_dir == tmp_path / "home"


def test_the_cache_defaults_to_the_state_directory(tmp_path, monkeypatch):
    """Offline edits live only in the cache: it goes where state goes, not to ~/.cache."""
    text = GOOD.replace("cache: {tmp}/cache\n", "")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert load_config(write(tmp_path, text)).cache == tmp_path / "state" / "cscd"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_config(write(tmp_path, text)).cache == tmp_path / "home" / ".local" / "state" / "cscd"
    assert load_config(write(tmp_path, GOOD)).cache == tmp_path / "cache"  # named: kept


def test_credentials_list_puts_the_ticket_first_and_the_file_after(tmp_path):
    cfg = load_config(write(tmp_path, GOOD.replace("credentials: {tmp}/creds", "credentials: [kerberos, {tmp}/creds]")))
    assert cfg.credentials == tmp_path / "creds" and cfg.kerberos_first
    (tmp_path / "creds").write_text("username=alice\npassword=secret\n")
    (tmp_path / "creds").chmod(0o600)
    logon = cfg.server_settings().credentials
    assert logon.fallback.username == "alice" and "secret" not in repr(logon)


def test_a_systemd_credential_is_the_file_systemd_passes(tmp_path, monkeypatch):
    text = GOOD.replace("credentials: {tmp}/creds", "credentials: systemd:cscd-smb")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match=r"cscd.yaml:3: credentials: systemd:cscd-smb: systemd passed no "
                                          r"credentials .*LoadCredential=cscd-smb:/path/to/file"):
        load_config(write(tmp_path, text))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds.d"))
    assert load_config(write(tmp_path, text)).credentials == tmp_path / "creds.d" / "cscd-smb"

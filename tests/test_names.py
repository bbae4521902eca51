"""Which names reach the server, and which server names are refused."""

import pytest

from cscd.errors import BadName, NameTooLong
from cscd.names import check_name, check_strict, local_name, server_name
from cscd.policy.unc import parse_unc


@pytest.mark.parametrize("name", [b"report.odt", "Übersicht 2026.txt".encode(), b".hidden", b"a" * 255])
def test_good_names_pass(name):
    assert check_name(name) == name.decode()


@pytest.mark.parametrize(
    "name",
    [b"", b".", b"..", b"a/b", b"a\0b", b"CON", b"com1.txt", b"aux. ", b"\xff\xfe", b"tab\there"],
)
def test_bad_names_refused(name):
    with pytest.raises(BadName):
        check_name(name)


def test_too_long_name_is_enametoolong():
    with pytest.raises(NameTooLong):
        check_name(b"a" * 256)


def test_unc_parses():
    t = parse_unc(r"\\files.example.com\home$\alice\Documents")
    assert (t.server, t.share, t.path) == ("files.example.com", "home$", ("alice", "Documents"))
    assert str(t) == r"\\files.example.com\home$\alice\Documents"
    assert parse_unc("//127.0.0.1/share").server == "127.0.0.1"


@pytest.mark.parametrize(
    "unc",
    [r"\\evil/../..\share", r"\\ser ver\share", r"\\-bad\share", "\\\\a\x00b\\share", r"\\server",
     r"\\server\\x", "server\\share", r"\\" + "a" * 300 + r"\share", r"\\host\share\..\etc"],
)
def test_hostile_unc_refused(unc):
    with pytest.raises(BadName):
        parse_unc(unc)


@pytest.mark.parametrize(("name", "stored"), [
    (b"a:b", "a\uf022b"), (b"what?", "what\uf025"), (b'say"hi"', "say\uf020hi\uf020"),
    (b"<x>|*", "\uf023x\uf024\uf027\uf021"), (b"back\\slash", "back\uf026slash"),
    (b"trailing.", "trailing\uf029"), (b"trailing ", "trailing\uf028"), (b"dots..", "dots\uf029\uf029"),
    (b"in.side s", "in.side s"), ("Übersicht: 2026".encode(), "Übersicht\uf022 2026"),
])
def test_names_smb_cannot_store_are_mapped_as_mapposix_does(name, stored):
    """The Services-for-Mac private-use mapping (mount.cifs mapposix, vfs_catia, vfs_fruit)."""
    assert server_name(name) == stored
    assert local_name(stored) == name


@pytest.mark.parametrize("name", [b"a:b", b"what?", b"trailing.", b"trailing "])
def test_names_written_in_server_form_keep_the_strict_rules(name):
    """UNC paths and redirections.xml paths are written by an admin in the server's form."""
    with pytest.raises(BadName):
        check_strict(name)

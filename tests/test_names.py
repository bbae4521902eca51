"""Which names reach the server, and which server names are refused."""

import pytest

from cscd.errors import BadName, NameTooLong
from cscd.names import check_name
from cscd.policy.unc import parse_unc


@pytest.mark.parametrize("name", [b"report.odt", "Übersicht 2026.txt".encode(), b".hidden", b"a" * 255])
def test_good_names_pass(name):
    assert check_name(name) == name.decode()


@pytest.mark.parametrize(
    "name",
    [b"", b".", b"..", b"a/b", b"a\0b", b"a:b", b"what?", b'say"hi"', b"trailing.", b"trailing ",
     b"CON", b"com1.txt", b"\xff\xfe", b"tab\there"],
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

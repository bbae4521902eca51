r"""FSLogix ``redirections.xml``: the exclusion model on an example of our own that uses every
documented feature, and malformed files, each refused with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from cscd.errors import ConfigError
from cscd.policy.fslogix import (
    CommonFolder,
    CopyMode,
    Exclusion,
    Inclusion,
    load_redirections_xml,
    parse_redirections_xml,
)

# Our own example: common folders Contacts (1) + Links (16) + Music (32) = 49; a vendor's cache
# kept local but copied both ways; a browser profile excluded without copying, except the
# bookmarks folder inside it; one Copy 1 and one Copy 2 exclusion; the wrapper elements used
# for some entries and not for others.
EXAMPLE = b"""<?xml version="1.0" encoding="UTF-8"?>
<FrxProfileFolderRedirection ExcludeCommonFolders="49">
  <Excludes>
    <Exclude Copy="3">AppData\\Roaming\\Fabrikam\\Planner</Exclude>
    <Exclude Copy="0">AppData\\Local\\Browser</Exclude>
    <Exclude Copy="1">AppData\\Local\\Seeded</Exclude>
  </Excludes>
  <Exclude Copy="2">AppData/Local/Outbox</Exclude>
  <Exclude>AppData\\Local\\Temp</Exclude>
  <Includes>
    <Include>AppData\\Local\\Browser\\Bookmarks</Include>
  </Includes>
  <Include>AppData\\Local\\Temp</Include>
</FrxProfileFolderRedirection>
"""


@pytest.fixture
def model():  # noqa: ANN201 - ProfileExclusions
    return parse_redirections_xml(EXAMPLE, "example.xml")


def test_common_folder_bits(model) -> None:  # noqa: ANN001
    bits = CommonFolder.CONTACTS | CommonFolder.LINKS | CommonFolder.MUSIC
    assert model.exclude_common_folders == bits
    common = [e.path for e in model.exclusions if e.common is not None]
    assert common == ["Contacts", "Links", "Music"]
    assert model.is_excluded("Music\\Album\\track.flac")
    assert not model.is_excluded("Documents\\letter.odt")
    assert not model.is_excluded("Desktop")


def test_all_bits_name_every_common_folder() -> None:
    m = parse_redirections_xml(b'<FrxProfileFolderRedirection ExcludeCommonFolders="255"/>')
    assert {e.path for e in m.exclusions} == {
        "Contacts", "Desktop", "Documents", "Downloads", "Links", "Music", "Pictures", "Videos",
        "AppData\\LocalLow"}


def test_exclusions_with_copy_values(model) -> None:  # noqa: ANN001
    explicit = {e.path: (e.copy, e.line) for e in model.exclusions if e.common is None}
    assert explicit == {
        "AppData\\Roaming\\Fabrikam\\Planner": (CopyMode.BOTH, 4),
        "AppData\\Local\\Browser": (CopyMode.NONE, 5),
        "AppData\\Local\\Seeded": (CopyMode.BASE_TO_TEMP, 6),
        "AppData\\Local\\Outbox": (CopyMode.TEMP_TO_BASE, 8),
        "AppData\\Local\\Temp": (CopyMode.NONE, 9),  # Copy left out means 0
    }
    assert [e.path for e in model.copied_in()] == [
        "AppData\\Roaming\\Fabrikam\\Planner", "AppData\\Local\\Seeded"]
    assert [e.path for e in model.copied_out()] == [
        "AppData\\Roaming\\Fabrikam\\Planner", "AppData\\Local\\Outbox"]


def test_include_brings_back_a_folder_inside_an_exclusion(model) -> None:  # noqa: ANN001
    assert model.is_excluded("AppData\\Local\\Browser\\Cache\\f_0001")
    assert not model.is_excluded("AppData\\Local\\Browser\\Bookmarks")
    assert not model.is_excluded(("AppData", "Local", "Browser", "Bookmarks", "bar.json"))
    assert model.rule_for("appdata/local/browser/bookmarks") == Inclusion(
        ("AppData", "Local", "Browser", "Bookmarks"), 11)


def test_exclude_wins_over_include_of_the_same_folder(model) -> None:  # noqa: ANN001
    assert model.is_excluded("AppData\\Local\\Temp\\x.tmp")
    assert [i.path for i in model.inclusions] == ["AppData\\Local\\Browser\\Bookmarks"]


def test_paths_compare_without_case(model) -> None:  # noqa: ANN001
    rule = model.rule_for("APPDATA\\roaming\\fabrikam\\planner\\db.sqlite")
    assert isinstance(rule, Exclusion) and rule.copy is CopyMode.BOTH
    assert not model.is_excluded("AppData\\Roaming\\Fabrikam")


def test_load_from_a_file(tmp_path: Path) -> None:
    p = tmp_path / "redirections.xml"
    p.write_bytes(EXAMPLE)
    assert load_redirections_xml(p).source == str(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_redirections_xml(tmp_path / "missing.xml")


def test_utf16_file_is_read() -> None:
    text = '<?xml version="1.0" encoding="UTF-16"?>\n<FrxProfileFolderRedirection ' \
           'ExcludeCommonFolders="4"><Exclude>Café</Exclude></FrxProfileFolderRedirection>'
    m = parse_redirections_xml(text.encode("utf-16"))
    assert m.is_excluded("Café\\x") and m.is_excluded("Documents")


ROOT_OPEN = '<FrxProfileFolderRedirection ExcludeCommonFolders="0">\n'
ROOT_CLOSE = "</FrxProfileFolderRedirection>\n"


def doc(body: str, root_open: str = ROOT_OPEN) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + root_open + body + ROOT_CLOSE).encode()


BAD = [
    (b"", 1, "not well-formed XML: no element found"),
    (doc("<Exclude>a</Exclude>\n<Exclude>b\n"), 5, "not well-formed XML: mismatched tag"),
    (doc("", '<FrxProfileFolderRedirection ExcludeCommonFolders="49">\n').replace(
        b"</FrxProfileFolderRedirection>\n", b""), 3, "not well-formed XML: no element found"),
    (b'<?xml version="1.0"?>\n<Redirections/>\n', 2,
     "Redirections: the root element must be FrxProfileFolderRedirection"),
    (doc("", '<FrxProfileFolderRedirection ExcludeCommonFolders="256">\n'), 2,
     "FrxProfileFolderRedirection ExcludeCommonFolders: expected a bitmask from 0 to 255"),
    (doc("", '<FrxProfileFolderRedirection ExcludeCommonFolders="0x10">\n'), 2,
     "expected a bitmask from 0 to 255"),
    (doc("", '<FrxProfileFolderRedirection ExcludeCommonFolder="1">\n'), 2,
     "FrxProfileFolderRedirection ExcludeCommonFolder: unknown attribute"),
    (doc('<Exclude Copy="4">AppData\\X</Exclude>\n'), 3, "Exclude Copy: expected 0, 1, 2 or 3"),
    (doc('<Exclude Copy="">AppData\\X</Exclude>\n'), 3, "Exclude Copy: expected 0, 1, 2 or 3"),
    (doc('<Exclude Mode="1">AppData\\X</Exclude>\n'), 3, "Exclude Mode: unknown attribute"),
    (doc("<Exclude>   </Exclude>\n"), 3, "Exclude: the path is empty"),
    (doc("<Exclude>C:\\Users\\%username%\\AppData</Exclude>\n"), 3,
     "must be relative to the profile folder"),
    (doc("<Include>\\AppData\\X</Include>\n"), 3, "Include: '\\\\AppData\\\\X' must be relative"),
    (doc("<Exclude>AppData\\..\\..\\Windows</Exclude>\n"), 3,
     "'..' are not allowed in a profile path"),
    (doc("<Exclude>AppData\\a|b</Exclude>\n"), 3, "characters the server cannot store"),
    (doc("<Exclude>AppData\\X</Exclude>\n<Exclude Copy='3'>appdata\\x</Exclude>\n"), 4,
     "Exclude: 'appdata\\\\x' is already excluded on line 3"),
    (doc("<Exclusions><Exclude>a</Exclude></Exclusions>\n"), 3,
     "Exclusions: unknown element (allowed: Exclude, Include, Excludes, Includes)"),
    (doc("<Excludes>\n<Include>a</Include>\n</Excludes>\n"), 4,
     "Include: Excludes may hold only Exclude elements"),
    (doc("<Excludes>stray text<Exclude>a</Exclude></Excludes>\n"), 3, "Excludes: unexpected text"),
    (doc("loose text\n"), 2, "FrxProfileFolderRedirection: unexpected text"),
    (doc("<Exclude>a<Sub/></Exclude>\n"), 3, "Sub: Exclude holds a path as text"),
    (doc("", '<!DOCTYPE x [<!ENTITY e "boom">]>\n' + ROOT_OPEN), 2,
     "DTDs and entities are not allowed"),
]


@pytest.mark.parametrize(("data", "line", "needle"), BAD,
                         ids=[f"{i:02d}-{b[2][:30]}" for i, b in enumerate(BAD)])
def test_malformed_file_names_its_line(data: bytes, line: int, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_redirections_xml(data, "redirections.xml")
    msg = str(info.value)
    assert msg.startswith(f"redirections.xml:{line}: "), msg
    assert needle in msg, msg


def test_the_example_in_policies_parses() -> None:
    path = Path(__file__).resolve().parents[1] / "policies" / "examples" / "redirections.xml"
    m = load_redirections_xml(path)
    assert m.is_excluded("Downloads\\x.iso") and m.is_excluded(".cache/fontconfig")
    assert not m.is_excluded(".mozilla\\firefox\\profile\\cache2\\bookmarkbackups\\b.json")
    assert [e.path for e in m.copied_out()] == [".local\\share\\planner"]

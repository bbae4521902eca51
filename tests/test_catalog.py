"""The journald message catalog (issue 19, part 6): every event explained, as shipped.

``systemd/cscd.catalog`` must be what ``cscd.catalog`` generates, cover every event, and be
accepted by the real ``journalctl --update-catalog`` (into a throwaway root), which then
hands out each explanation by MESSAGE_ID, with the event's fields as journalctl fills them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cscd.catalog import catalog_text
from cscd.events import EVENTS, EventId

SHIPPED = Path(__file__).resolve().parents[1] / "systemd" / "cscd.catalog"


def test_the_shipped_catalog_is_the_generated_one() -> None:
    assert SHIPPED.read_text() == catalog_text(), "run: python -m cscd.catalog > systemd/cscd.catalog"


def test_every_placeholder_is_a_field_the_event_carries() -> None:
    for event_id, spec in EVENTS.items():
        block = catalog_text().split(f"-- {spec.message_id.hex}\n", 1)[1].split("\n-- ", 1)[0]
        fields = set(re.findall(r"\{(\w+)\}", spec.template)) | {"folder"}
        for name in re.findall(r"@CSCD_([A-Z_]+)@", block):
            assert name.lower() in fields, f"{event_id.name}: @CSCD_{name}@ is not one of its fields {fields}"


@pytest.mark.skipif(shutil.which("journalctl") is None, reason="needs journalctl (systemd)")
def test_journalctl_reads_it(tmp_path: Path) -> None:
    catalog_dir = tmp_path / "usr" / "lib" / "systemd" / "catalog"
    catalog_dir.mkdir(parents=True)
    shutil.copy(SHIPPED, catalog_dir / "cscd.catalog")
    subprocess.run(["journalctl", f"--root={tmp_path}", "--update-catalog"], check=True, timeout=60)
    listed = subprocess.run(["journalctl", f"--root={tmp_path}", "--list-catalog"], check=True, timeout=60,
                            capture_output=True, text=True).stdout
    for spec in EVENTS.values():
        assert spec.message_id.hex in listed, spec
    conflict = EVENTS[EventId.CONFLICT_CREATED].message_id.hex
    text = subprocess.run(["journalctl", f"--root={tmp_path}", "--dump-catalog", conflict], check=True,
                          timeout=60, capture_output=True, text=True).stdout
    assert "Subject: A file changed on both sides" in text and "cscd conflicts resolve" in text, text

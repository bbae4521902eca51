"""Smoke test of bench/: ``python -m bench --quick --only hashing,small`` runs and reports numbers.

No timing assertions (the figures depend on the machine): only that the command exits 0 and that
its JSON has both cases, without errors, with a numeric cscd value, reference value and ratio in
every row. The ``small`` case starts the whole set-up (a private smbd, the cscd daemon, rclone
mount), so this also proves the harness comes up and tears down cleanly.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CASES = ("hashing", "small")


def _missing_tools() -> list[str]:
    missing = [t for t in ("smbd", "smbpasswd", "rclone", "xxhsum", "fusermount3") if shutil.which(t) is None]
    if not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse")
    return missing


@pytest.mark.timeout(240)
def test_quick_bench_reports_numbers_for_hashing_and_small_files(tmp_path: Path) -> None:
    if missing := _missing_tools():
        pytest.skip(f"the benchmark needs {', '.join(missing)}")
    out = tmp_path / "latest.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", ",".join(CASES), "--json", str(out),
         "--workdir", str(tmp_path / "work")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=200, check=False,
    )
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["meta"]["partial"] is False
    assert set(CASES) <= set(doc["cases"]), f"cases in the JSON: {sorted(doc['cases'])}"
    for name in CASES:
        case = doc["cases"][name]
        assert case["error"] is None, f"{name}: {case['error']}\n{case['error_detail']}"
        assert case["rows"], f"{name} reported no rows"
        for row in case["rows"]:
            for key in ("cscd", "reference", "ratio"):
                value = row[key]
                assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (
                    f"{name}: {row['label']} vs {row['reference_name']}: {key} is {value!r}; errors: {row['errors']}"
                )
    assert not list((tmp_path / "work").glob("*/cscd-mnt")), "the run directory was not removed"

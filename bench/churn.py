"""Case 10, churn: operations per second of the same fio and stress-ng jobs on each side.

The churn tests (``tests/test_churn.py``) judge whether cscd survives these programs; this
case measures how fast it is while doing so, beside the local disk and rclone. The jobs
are the tests' own (``tests/helpers/churn.py``), one worker each:

- fio: random writes of 4–64 KiB (psync, an fsync every 64 writes and at the end) over a
  32 MiB file, then a read-back that verifies every block's crc32c; the figure is fio's
  write IOPS. A failed verification fails the cell.
- stress-ng ``--rename``, ``--dir`` and ``--iomix`` for ``Options.stress_s`` seconds each
  (10; 3 with ``--quick``, where fio writes 8 MiB and iomix is left out: through cscd it
  completes no operation in its first few seconds), with ``--verify``; the figure is
  stress-ng's bogo ops per second (real time). A non-zero exit fails the cell.

rclone is measured with its VFS cache (``--vfs-cache-mode full``), as in every case.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from bench.cases import CLIENTS, Options
from bench.harness import Env
from bench.report import CaseResult
from tests.helpers import churn

STRESSORS = {"rename": [], "dir": ["--dir-dirs", "256"], "iomix": ["--iomix-bytes", "4M"]}
_RATE_RE = r"metrc: \[\d+\] {name}\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s"


def _fio_iops(directory: Path, size: str) -> float:
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [a for a in churn.fio_args(directory / "fio.dat", size) if not a.startswith("--output-format")]
    result = subprocess.run([*cmd, "--do_verify=1", "--output-format=json"], capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"fio exited with {result.returncode}: {result.stderr.strip()[-300:]}")
    job = json.loads(result.stdout[result.stdout.index("{"):])["jobs"][0]
    if job.get("error"):
        raise RuntimeError(f"fio reported error {job['error']} (a failed crc32c verify?)")
    return float(job["write"]["iops"])


def _stress_rate(directory: Path, stressor: str, seconds: int) -> float:
    result = churn.stress_ng(directory, stressor, STRESSORS[stressor], timeout_s=seconds)
    if result.returncode != 0:
        raise RuntimeError(f"stress-ng --{stressor} exited with {result.returncode} "
                           f"({churn.STRESS_NG_EXIT.get(result.returncode, '?')})")
    m = re.search(_RATE_RE.format(name=re.escape(stressor)), result.stdout + result.stderr)
    if m is None:
        raise RuntimeError(f"stress-ng --{stressor} printed no metrics")
    if float(m[1]) == 0:
        raise RuntimeError(f"stress-ng --{stressor} completed no operation in {seconds} s")
    return float(m[1])


def run_churn(env: Env, o: Options, res: CaseResult, _state: None) -> None:
    full = o.stress_s >= 10
    fio_size = "32M" if full else "8M"
    stressors = [s for s in STRESSORS if full or s != "iomix"]
    roots = {"local": env.local}
    for name in CLIENTS:
        try:
            roots[name] = env.side(name).root
        except RuntimeError as exc:
            for key in ("fio", *stressors):
                res.cell(f"{key}.{name}", "ops/s").fail(exc)
    for i in range(o.repeat):
        for name, root in roots.items():
            work = root / "churn" / f"r{i}"
            res.cell(f"fio.{name}", "IOPS").sample(lambda work=work: _fio_iops(work / "fio", fio_size))
            for stressor in stressors:
                res.cell(f"{stressor}.{name}", "ops/s").sample(
                    lambda work=work, s=stressor: _stress_rate(work / s, s, o.stress_s))
            shutil.rmtree(work, ignore_errors=True)
    for key, label in (("fio", f"fio randwrite 4-64 KiB over {fio_size}iB + crc32c verify (write IOPS)"),
                       *((s, f"stress-ng --{s} (bogo ops/s)") for s in stressors)):
        res.row(label, f"{key}.cscd", f"{key}.local", "local disk", higher_is_better=True)
        res.row(label, f"{key}.cscd", f"{key}.rclone", "rclone", higher_is_better=True)

"""The set-up scripts: ``.ci/setup`` leaves a working machine, ``.ci/run`` is the README command.

``.ci/run`` is checked by running a copy of it in a throw-away repository whose ``.ci/setup``
and ``.venv/bin/python`` are small fakes that record how they were called and exit with a
chosen code; ``.ci/setup`` is checked in ``--check`` mode, which changes nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / ".ci" / "setup"
RUN = REPO / ".ci" / "run"
README = REPO / "README.md"


def readme_test_command() -> str:
    """The README's test command: the shell line that runs pytest, without its comment."""
    commands = [
        line.split("#", 1)[0].strip()
        for line in README.read_text(encoding="utf-8").splitlines()
        if re.search(r"\bpython -m pytest\b", line) and ".ci/setup" in line
    ]
    assert len(commands) == 1, (
        f"README.md should show the test command exactly once, found {commands}"
    )
    return commands[0]


@pytest.mark.parametrize("script", [SETUP, RUN], ids=lambda p: p.name)
def test_ci_script_is_executable(script: Path) -> None:
    assert script.stat().st_mode & stat.S_IXUSR, f"chmod +x {script.relative_to(REPO)}"


@pytest.mark.parametrize("script", [SETUP, RUN], ids=lambda p: p.name)
def test_ci_script_is_valid_bash(script: Path) -> None:
    result = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_run_holds_the_readme_test_command() -> None:
    assert README.exists(), "README.md is missing: it holds the two commands"
    command = readme_test_command()
    assert command == "bash .ci/setup && .venv/bin/python -m pytest"
    code_lines = [
        line for line in RUN.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    assert sum(command in line for line in code_lines) == 1, (
        f"{RUN.name} should run {command!r} once"
    )


def test_setup_finds_everything_in_place() -> None:
    """What the suite runs on is what ``.ci/setup`` installs (``--check`` changes nothing)."""
    result = subprocess.run(
        ["bash", str(SETUP), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"bash .ci/setup --check:\n{result.stdout}{result.stderr}"


# ------------------------------------------------------------------ .ci/run in a fake repository


@dataclass
class FakeRepo:
    root: Path
    log: Path

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def make_fake_repo(tmp_path: Path, *, setup_code: int, pytest_code: int) -> FakeRepo:
    root = tmp_path / "repo"
    (root / ".ci").mkdir(parents=True)
    (root / ".venv" / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    shutil.copy2(RUN, root / ".ci" / "run")
    fakes = {
        root / ".ci" / "setup": f'echo "setup cwd=$PWD" >> "{log}"\nexit {setup_code}\n',
        root
        / ".venv"
        / "bin"
        / "python": f'echo "python $* cwd=$PWD" >> "{log}"\nexit {pytest_code}\n',
    }
    for path, body in fakes.items():
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    return FakeRepo(root, log)


def run_from_elsewhere(repo: FakeRepo, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(repo.root / ".ci" / "run"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_run_fails_when_pytest_collects_no_tests(tmp_path: Path) -> None:
    repo = make_fake_repo(tmp_path, setup_code=0, pytest_code=5)
    result = run_from_elsewhere(repo, tmp_path)
    assert result.returncode != 0
    assert "no tests" in result.stderr


def test_run_runs_setup_then_pytest_at_the_repository_root(tmp_path: Path) -> None:
    repo = make_fake_repo(tmp_path, setup_code=0, pytest_code=0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_from_elsewhere(repo, elsewhere)
    assert result.returncode == 0, result.stderr
    root = os.path.realpath(repo.root)
    assert repo.calls() == [f"setup cwd={root}", f"python -m pytest cwd={root}"]


@pytest.mark.parametrize("code", [0, 1, 2, 3, 4])
def test_run_passes_other_pytest_exit_codes_through(tmp_path: Path, code: int) -> None:
    repo = make_fake_repo(tmp_path, setup_code=0, pytest_code=code)
    assert run_from_elsewhere(repo, tmp_path).returncode == code


def test_run_stops_when_setup_fails(tmp_path: Path) -> None:
    repo = make_fake_repo(tmp_path, setup_code=1, pytest_code=0)
    result = run_from_elsewhere(repo, tmp_path)
    assert result.returncode != 0
    assert not any(call.startswith("python") for call in repo.calls()), "pytest must not run"


def test_run_passes_arguments_to_pytest(tmp_path: Path) -> None:
    repo = make_fake_repo(tmp_path, setup_code=0, pytest_code=0)
    run_from_elsewhere(repo, tmp_path, "-k", "proxy")
    assert repo.calls()[-1].startswith("python -m pytest -k proxy ")

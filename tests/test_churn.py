"""Churn: programs nobody here wrote drive the real mount, judged by outcome (issue 14).

Each test mounts a fresh redirected Documents on the session smbd (``MountEnv``: a real
smbd, the real daemon in a subprocess, a TCP proxy between them), runs one workload from
``tests/helpers/churn.py`` in it, and ends with ``assert_converged``: the daemon alive, the
mount answering, 0 pending, no conflict copy on the mount or the server (one writer never
conflicts with itself), no traceback in the daemon's log, and the server's folder equal to
the mounted one and to a local reference (names, sizes, sha256). ``MountEnv.close()`` then
stops the daemon (exit code 0) and runs the cache consistency check.

Workloads: the ``sqlite3`` shell in DELETE and WAL journal modes (one process per
transaction, a concurrent reader), ``git`` (commits, branch, checkouts, rebase, gc, fsck),
``tar`` x/c of a few thousand files, the save patterns of vim, LibreOffice and VS Code,
``rsync -a`` twice over a changing tree, rapid rewrites of a 24 MiB file while it uploads,
create-then-delete races, ``stress-ng`` file-system stressors and ``fio`` random writes
with crc32c verify. The whole module takes about four minutes on a 2-core VM.

stress-ng stressors, one short worker each in ``--temp-path`` inside the mount:

- run, all with ``--verify``, each judged by its exit code 0 and a non-zero bogo-op count:
  ``dir``, ``dentry``, ``rename``, ``filename`` (probes the allowed name characters first),
  ``hdd``, ``iomix``, ``lockf`` (the kernel keeps POSIX locks for a FUSE file system without
  lock handlers), ``mmap`` on a file (shared writable mappings go through the page cache),
  ``seek``, ``symlink`` (Minshall-French links: made, read back and removed, many times).
- left out: ``link`` (cscd refuses hard links with EPERM; stress-ng skips it with exit
  code 3), ``fallocate`` (pyfuse3 has no fallocate handler, so it is EOPNOTSUPP and the
  stressor does 0 operations), ``chown`` (every file belongs to the mounting user;
  ownership changes are accepted and ignored, so it tests nothing),
  ``xattr`` (it sets thousands of attributes on one file; each set here rewrites the file's
  whole set, capped at 64 KiB as SMB's, so one of its rounds outlasts the run and it reports
  0 operations: the semantics are in ``test_roaming_attrs.py``), ``fiemap`` (no FS_IOC_FIEMAP on FUSE),
  ``mknod`` (special files are EPERM), ``copy-file`` (needs at least 128 MB per file).

``--soak`` (a command-line option registered in ``conftest.py``): every test runs
``SOAK_ROUNDS`` times, each round a fresh mount with a new seed, about an hour in all;
run it as ``.venv/bin/python -m pytest tests/test_churn.py --soak``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.helpers import churn

pytestmark = pytest.mark.churn

SOAK_ROUNDS = 15
"""Rounds of every test with ``--soak``: the module takes about 4 minutes, so about an hour."""

STRESS_S = 4
"""How long each stress-ng stressor runs (the files are small so that it gets going in time:
writing a 16 MiB file 8 KiB at a time alone takes about 5 s on the mount, hence 8 MiB for hdd
and seek; 4 s keeps every stressor doing work and the suite ~20 s shorter than 6 s did)."""

STRESSORS = {
    "dir": ["--dir-dirs", "256"],
    "dentry": ["--dentries", "256"],
    "rename": [],
    "filename": [],
    "hdd": ["--hdd-bytes", "8M"],
    "iomix": ["--iomix-bytes", "4M"],
    "lockf": [],
    "mmap": ["--mmap-file", "--mmap-bytes", "4M"],
    "seek": ["--seek-size", "8M"],
    "symlink": [],
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "churn_round" in metafunc.fixturenames and metafunc.config.getoption("soak"):
        metafunc.parametrize("churn_round", range(SOAK_ROUNDS), ids=lambda i: f"round{i}")


@pytest.fixture
def churn_round() -> int:
    """Which soak round this is (0 without ``--soak``); seeds the workload."""
    return 0


@pytest.fixture
def env(mount_env, request):
    """A mounted daemon; ``indirect`` parameter ``"sealed"``: on a cache sealed by cscd (the
    default where the cache's file system has no fscrypt), whose block format these programs
    writes at odd offsets must not break."""
    env = mount_env(start=False)
    if getattr(request, "param", "plain") == "sealed":
        env.seal_the_cache()
    env.start_daemon()
    yield env
    # Shown with a failing test's report: what the daemon said last.
    print(f"---- last lines of {env.daemon.log_path}:\n{env.daemon.log_tail(80)}")


@pytest.fixture
def ref(tmp_path) -> Path:
    """The local reference directory (on local disk, not in the mount)."""
    path = tmp_path / "reference"
    path.mkdir()
    return path


# ---------------------------------------------------------------- sqlite3


@pytest.mark.parametrize(("env", "journal_mode"), [("plain", "delete"), ("plain", "wal"), ("sealed", "wal")],
                         indirect=["env"])
def test_sqlite_one_process_per_transaction_with_a_reader(env, tmp_path, journal_mode, churn_round):
    transactions, rows = 40, 30
    db = env.docs / "churn.db"
    seen = churn.sqlite_workload(db, journal_mode, transactions=transactions, rows_per_tx=rows,
                                 seed=churn_round)

    assert not seen.failures, f"the reader failed {len(seen.failures)} times: {seen.failures[:5]}"
    assert seen.counts, "the reader never got an answer"
    torn = [c for c in seen.counts if c % rows]
    assert not torn, f"the reader saw half a transaction: counts {torn[:10]}"
    assert seen.counts == sorted(seen.counts), f"the row count went backwards: {seen.counts}"
    assert churn.run(["sqlite3", str(db), "PRAGMA integrity_check;"]).stdout.strip() == "ok"
    assert churn.run(["sqlite3", str(db), "SELECT count(*) FROM t;"]).stdout.strip() == str(transactions * rows)
    churn.wait_settled(env)
    # The last connection closed: no journal, -wal or -shm file is left, here or on the server.
    assert sorted(os.listdir(env.docs)) == ["churn.db"]
    assert sorted(os.listdir(env.server)) == ["churn.db"]
    server_copy = churn.copy_out(env.server / "churn.db", tmp_path / "server-copy.db")
    assert churn.run(["sqlite3", str(server_copy), "PRAGMA integrity_check;"]).stdout.strip() == "ok"
    assert churn.run(["sqlite3", str(server_copy), "SELECT count(*) FROM t;"]).stdout.strip() \
        == str(transactions * rows)
    churn.assert_converged(env)


# ---------------------------------------------------------------- git


@pytest.mark.parametrize("env", ["plain", "sealed"], indirect=True)
def test_git_commits_branches_rebase_and_gc(env, tmp_path, churn_round):
    home = tmp_path / "git-home"
    home.mkdir()
    repo = env.docs / "repo"
    churn.git_workload(repo, home, files=200, seed=churn_round)

    churn.git(repo, "fsck", "--full", "--strict", "--no-progress", home=home)
    assert churn.git(repo, "status", "--porcelain", home=home) == "", "the work tree is not clean"
    # The same workload on local disk (fixed dates: the same commits) is the reference.
    local = tmp_path / "local-repo"
    churn.git_workload(local, home, files=200, seed=churn_round)
    heads = ["for-each-ref", "--format=%(refname) %(objectname)"]
    assert churn.git(repo, *heads, home=home) == churn.git(local, *heads, home=home)
    work_tree = {k: v for k, v in churn.tree_digest(repo).items() if not (k == ".git" or k.startswith(".git/"))}
    local_tree = {k: v for k, v in churn.tree_digest(local).items() if not (k == ".git" or k.startswith(".git/"))}
    churn.assert_trees_equal(local_tree, work_tree, "the local repo's work tree", "the mount's")
    churn.assert_converged(env)
    server_copy = churn.copy_out(env.server / "repo", tmp_path / "server-repo")
    churn.git(server_copy, "fsck", "--full", "--strict", "--no-progress", home=home)


# ---------------------------------------------------------------- tar


def test_tar_extract_and_archive_a_few_thousand_files(env, tmp_path, ref, churn_round):
    churn.make_tree(ref, random.Random(churn_round), files=2000, big_every=200)
    back = churn.tar_roundtrip(ref, env.docs / "tree", tmp_path / "tar")

    churn.assert_trees_equal(churn.tree_digest(ref), churn.tree_digest(back),
                             "the reference", "what tar c read back from the mount")
    churn.assert_converged(env, ref, subdir="tree")


# ---------------------------------------------------------------- editors


DOCS = ["report.txt", "notes.md", "budget.ods", "letter.odt"]


@pytest.mark.parametrize("editor", ["vim", "libreoffice", "vscode"])
def test_editor_save_pattern_leaves_the_last_save_and_no_conflict(env, ref, editor, churn_round):
    rng = random.Random(churn_round)
    saves = {"vim": churn.vim_saves, "libreoffice": churn.libreoffice_saves,
             "vscode": churn.vscode_saves}[editor]
    churn.write_docs(env.docs, ref, DOCS, rng)
    churn.wait_settled(env)
    last = saves(env.docs, ref, DOCS, saves=40, rng=rng)

    churn.wait_settled(env)
    for name, data in last.items():
        assert (env.server / name).read_bytes() == data, f"{name}: the server does not hold the last save"
    churn.assert_converged(env, ref)


# ---------------------------------------------------------------- rsync


def test_rsync_twice_over_a_changing_tree(env, ref, churn_round):
    left = churn.rsync_workload(ref, env.docs / "mirror", random.Random(churn_round), files=400)

    assert left == "", f"rsync --checksum still finds differences after the second run:\n{left}"
    churn.assert_converged(env, ref, subdir="mirror")


# ---------------------------------------------------------------- big file


def test_rapid_rewrites_of_a_big_file_end_with_the_last_write(env, ref):
    last = churn.rapid_rewrites(env.docs / "big.bin", versions=6, size=24 << 20,
                                bytes_sent=lambda: env.proxy.bytes_to_server)
    (ref / "big.bin").write_bytes(last)

    churn.wait_settled(env)
    assert churn.sha256_file(env.server / "big.bin") == churn.sha256_file(ref / "big.bin"), \
        "the server does not hold the last write"
    churn.assert_converged(env, ref)


# ---------------------------------------------------------------- create, then delete


def test_create_then_delete_races_leave_nothing_behind(env, ref, churn_round):
    gone = churn.create_delete_races(env.docs, ref, iterations=150, workers=2, rng_seed=churn_round)

    churn.wait_settled(env)
    back = sorted(set(gone) & set(os.listdir(env.server)))
    assert not back, f"{len(back)} deleted names exist on the server: {back[:20]}"
    churn.assert_converged(env, ref)


# ---------------------------------------------------------------- stress-ng


@pytest.mark.parametrize("stressor", list(STRESSORS))
def test_stress_ng_stressor(env, stressor, churn_round):
    result = churn.stress_ng(env.docs / f"stress-{stressor}", stressor, STRESSORS[stressor], timeout_s=STRESS_S)

    assert result.returncode == 0, (
        f"stress-ng --{stressor} exited with {result.returncode} "
        f"({churn.STRESS_NG_EXIT.get(result.returncode, 'unknown')})\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    assert churn.bogo_ops(result, stressor), f"stress-ng --{stressor} did no work:\n{result.stdout}{result.stderr}"
    churn.assert_converged(env)


# ---------------------------------------------------------------- fio


@pytest.mark.parametrize("env", ["plain", "sealed"], indirect=True)
def test_fio_random_writes_verify_here_and_on_the_server(env, tmp_path):
    target = env.docs / "fio.dat"
    churn.fio_randwrite_verify(target, size="32M")

    churn.wait_settled(env)
    assert churn.sha256_file(env.server / "fio.dat") == churn.sha256_file(target), \
        "the server's copy differs from the mount's"
    churn.fio_verify_only(churn.copy_out(env.server / "fio.dat", tmp_path / "server-fio.dat"), size="32M")
    churn.assert_converged(env)

"""Sealed content files and index entries (``cscd.cache.sealing``): real files on the disk.

A sealed file must behave like a plain one under any sequence of writes, truncations and reads
(a hypothesis state machine keeps a plain file beside it), hold no plaintext on the disk, and
refuse bytes that were changed or moved there.
"""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cscd.cache import sealing
from cscd.cache.sealed_cache import seal_file
from cscd.cache.sealing import BLOCK, HEADER, OVERHEAD, SLOT, Sealer
from cscd.errors import CorruptContent

KEY = bytes(range(64))
OTHER_KEY = bytes(range(1, 65))
#: offsets and lengths near block edges, where the sealed format has its cases
EDGES = st.sampled_from([0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK - 7, 3 * BLOCK, 3 * BLOCK + 5, 200_000])


def _open(path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


@pytest.fixture
def sealed_fd(tmp_path):
    fd = _open(tmp_path / "sealed")
    yield fd
    os.close(fd)


def test_sizes_on_the_disk_round_trip():
    for logical in (0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK + 3):
        assert sealing.logical_size(sealing.physical_size(logical)) == logical
    assert sealing.physical_size(BLOCK) == HEADER + SLOT
    assert sealing.physical_size(1) == HEADER + 1 + OVERHEAD


def test_no_plaintext_on_the_disk_and_the_tail_reads_back(tmp_path, sealed_fd):
    secret = b"the quarterly figures nobody may read " * 5000
    s = Sealer(KEY)
    assert s.pwrite(sealed_fd, secret, 0) == len(secret)
    raw = (tmp_path / "sealed").read_bytes()
    assert b"quarterly" not in raw
    assert len(raw) == sealing.physical_size(len(secret))
    assert s.size(sealed_fd) == len(secret)
    assert s.pread(sealed_fd, 100, len(secret) - 40) == secret[-40:]
    assert s.pread(sealed_fd, 10, len(secret)) == b""


def test_holes_read_as_zeros_and_stay_holes(tmp_path, sealed_fd):
    s = Sealer(KEY)
    s.truncate(sealed_fd, 10 * BLOCK + 17)  # a placeholder: nothing fetched yet
    s.pwrite(sealed_fd, b"x" * 100, 4 * BLOCK + 10)
    assert s.size(sealed_fd) == 10 * BLOCK + 17
    assert s.pread(sealed_fd, 20, 4 * BLOCK) == bytes(10) + b"x" * 10
    assert s.pread(sealed_fd, 3 * BLOCK, 7 * BLOCK + 17) == bytes(3 * BLOCK)
    # only the written block takes room on the disk
    assert os.fstat(sealed_fd).st_blocks * 512 < 4 * BLOCK


def test_a_changed_byte_or_a_moved_block_is_refused(tmp_path, sealed_fd):
    s = Sealer(KEY)
    s.pwrite(sealed_fd, os.urandom(3 * BLOCK), 0)
    first = os.pread(sealed_fd, SLOT, HEADER)
    second = os.pread(sealed_fd, SLOT, HEADER + SLOT)
    os.pwrite(sealed_fd, second, HEADER)  # block 1 where block 0 was
    with pytest.raises(CorruptContent, match="block 0"):
        s.pread(sealed_fd, 10, 0)
    os.pwrite(sealed_fd, first, HEADER)
    flipped = bytes([first[40] ^ 1])
    os.pwrite(sealed_fd, flipped, HEADER + 40)
    with pytest.raises(CorruptContent):
        s.pread(sealed_fd, 10, 5)
    os.pwrite(sealed_fd, first[40:41], HEADER + 40)
    assert len(s.pread(sealed_fd, 10, 5)) == 10
    with pytest.raises(CorruptContent):
        Sealer(OTHER_KEY).pread(sealed_fd, 10, 0)


def test_a_kernel_copy_is_a_sealed_file_that_opens(tmp_path, sealed_fd):
    """Upload snapshots are ``copy_file_range`` copies of the content file."""
    s = Sealer(KEY)
    data = os.urandom(2 * BLOCK + 99)
    s.pwrite(sealed_fd, data, 0)
    copy = _open(tmp_path / "copy")
    try:
        size = os.fstat(sealed_fd).st_size
        assert os.copy_file_range(sealed_fd, copy, size, 0, 0) == size
        assert s.pread(copy, len(data) + 10, 0) == data
    finally:
        os.close(copy)


def test_a_plain_file_is_sealed_by_a_copy_that_keeps_its_holes(tmp_path):
    """A plain cache sealed in place: a placeholder's unfetched parts take no room after."""
    plain = tmp_path / "plain"
    data = os.urandom(BLOCK + 3)
    with open(plain, "wb") as f:
        f.truncate(64 * BLOCK)
        f.seek(20 * BLOCK + 5)
        f.write(data)
    src, dst = os.open(plain, os.O_RDONLY), _open(tmp_path / "sealed")
    try:
        s = Sealer(KEY)
        seal_file(src, dst, s)
        assert s.size(dst) == 64 * BLOCK
        assert s.pread(dst, 64 * BLOCK, 0) == plain.read_bytes()
        assert os.fstat(dst).st_blocks * 512 <= 4 * SLOT + 4096
    finally:
        os.close(src)
        os.close(dst)


def test_names_are_deterministic_per_directory_and_values_are_not():
    s = Sealer(KEY)
    a = s.seal_name(b"dir1", b"report.odt")
    assert a == s.seal_name(b"dir1", b"report.odt")
    assert a != s.seal_name(b"dir2", b"report.odt")
    assert b"report" not in a
    assert s.open_name(b"dir1", a) == b"report.odt"
    with pytest.raises(CorruptContent):
        s.open_name(b"dir2", a)
    v = s.seal_value(b"payroll.xlsx")
    assert v != s.seal_value(b"payroll.xlsx")
    assert s.open_value(v) == b"payroll.xlsx"
    with pytest.raises(CorruptContent):
        Sealer(OTHER_KEY).open_value(v)


def test_a_file_that_is_not_sealed_is_refused(tmp_path):
    path = tmp_path / "plain"
    path.write_bytes(b"plain text from before the cache was sealed" * 10)
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(CorruptContent, match="not sealed"):
            Sealer(KEY).pread(fd, 10, 0)
    finally:
        os.close(fd)


class SealedLikePlain(RuleBasedStateMachine):
    """Any sequence of writes and truncations leaves the sealed file equal to a plain one."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.sealed = _open(os.path.join(self.dir, "sealed"))
        self.plain = _open(os.path.join(self.dir, "plain"))
        self.s = Sealer(KEY)

    @rule(offset=EDGES, shift=st.integers(-3, 3), data=st.binary(min_size=1, max_size=3 * BLOCK // 2))
    def write(self, offset, shift, data):
        offset = max(offset + shift, 0)
        assert self.s.pwrite(self.sealed, data, offset) == len(data)
        os.pwrite(self.plain, data, offset)

    @rule(size=EDGES, shift=st.integers(-3, 3))
    def truncate(self, size, shift):
        size = max(size + shift, 0)
        self.s.truncate(self.sealed, size)
        os.ftruncate(self.plain, size)

    @rule(offset=EDGES, length=st.integers(1, 3 * BLOCK))
    def read(self, offset, length):
        assert self.s.pread(self.sealed, length, offset) == os.pread(self.plain, length, offset)

    @invariant()
    def same(self):
        size = os.fstat(self.plain).st_size
        assert self.s.size(self.sealed) == size
        assert self.s.pread(self.sealed, size + 1, 0) == os.pread(self.plain, size + 1, 0)

    def teardown(self) -> None:
        os.close(self.sealed)
        os.close(self.plain)
        for name in ("sealed", "plain"):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)


SealedLikePlain.TestCase.settings = settings(max_examples=60, stateful_step_count=12, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow])
test_sealed_file_behaves_like_a_plain_one = SealedLikePlain.TestCase

"""Sealed content files and index entries (``cscd.cache.sealing``, ``sealed_cache``): real files
and a real LMDB on the disk.

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

from cscd.cache import attrs, nodes, sealed_cache, sealing, unrecorded
from cscd.cache.check import check_cache
from cscd.cache.index import Index
from cscd.cache.nodes import Flag, Node
from cscd.cache.sealed_cache import seal_file
from cscd.cache.sealing import BLOCK, HEADER, OVERHEAD, SLOT, Sealer
from cscd.cache.store import MEMORY_SNAPSHOT_BYTES, ContentStore
from cscd.sealed_files import SealedReader, read_source
from cscd.sync import chunker
from cscd.errors import ConfigError, CorruptContent
from cscd.reconcile import Ours, Unrecorded
from cscd.types import ROOT_ID, RemoteEntry

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


def test_a_header_kept_from_a_read_is_read_again_when_the_file_is_new(tmp_path, sealed_fd):
    """Reads past a file's first blocks reuse its header from the read before (no read at
    offset 0 each time). A file cut to nothing and written again has a new header on the same
    inode: its bytes still read back, and a changed block is still refused."""
    s = Sealer(KEY)
    far = 6 * BLOCK
    old = os.urandom(8 * BLOCK)
    s.pwrite(sealed_fd, old, 0)
    assert s.pread(sealed_fd, 1000, far) == old[far:far + 1000]  # the header is kept now
    s.truncate(sealed_fd, 0)
    new = os.urandom(8 * BLOCK)
    s.pwrite(sealed_fd, new, 0)
    assert os.pread(sealed_fd, HEADER, 0) != b"", "the file has a header of its own"
    assert s.pread(sealed_fd, 1000, far) == new[far:far + 1000]
    assert s.pread(sealed_fd, 2 * BLOCK, far - 10) == new[far - 10:far - 10 + 2 * BLOCK]
    at = HEADER + 6 * SLOT + 100
    os.pwrite(sealed_fd, bytes([os.pread(sealed_fd, 1, at)[0] ^ 1]), at)
    with pytest.raises(CorruptContent, match="block 6"):
        s.pread(sealed_fd, 10, far + 5)


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


def test_a_large_file_s_snapshot_is_a_sealed_copy_on_the_disk_that_workers_open(tmp_path):
    """A large file's upload reads a sealed copy (no plaintext on the disk, none of its size in
    memory) through ``SealedReader`` and the content key alone; the copy is cut at the size
    the index gave, and later writes to the live file do not reach it."""
    s = Sealer(KEY)
    store = ContentStore(tmp_path / "content", sealer=s)
    s.folder_of = lambda node_id: b"Videos"  # the live file is sealed with its folder's key
    size = MEMORY_SNAPSHOT_BYTES + 3 * BLOCK + 1234  # not a block multiple: the copy is cut
    data = (b"the plain text of a large file " * (size // 31 + 1))[:size]
    live = store.open(7, 0)
    try:
        store.pwrite(live, data + b"written after the index's size", 0, 7)
        assert store.snapshot_is_sealed(size) and not store.snapshot_is_sealed(MEMORY_SNAPSHOT_BYTES)
        snap = store.snapshot(7, size)
        try:
            s.pwrite(live, b"X" * 100, 0)  # the live file changes; the snapshot must not
            assert not os.readlink(f"/proc/self/fd/{snap}").startswith("/memfd:"), "a copy in memory"
            raw = os.pread(snap, os.fstat(snap).st_size, 0)
            assert b"plain text" not in raw
            assert len(raw) == sealing.physical_size(size)
            key = store.snapshot_key(snap, size)
            assert key.key_id != 0 and key.key != s.content_key, "not the folder's own key"
            reader = SealedReader(snap, key)  # what a worker process builds
            assert reader.size() == size
            assert reader.pread(size + 100, 0) == data
            assert read_source(reader, 50, size - 20) == data[-20:]
        finally:
            os.close(snap)
        small = store.snapshot(7, 1000)  # a small file's copy stays plain, in memory
        try:
            assert os.readlink(f"/proc/self/fd/{small}").startswith("/memfd:")
            assert read_source(small, 2000, 0) == b"X" * 100 + data[100:1000]
        finally:
            os.close(small)
    finally:
        os.close(live)


def test_each_folder_has_its_own_key_and_a_wipe_erases_it(tmp_path):
    """Crypto-erase: a folder's files are sealed with a key of its own, kept on the disk
    sealed with the cache's key. Destroying it makes any copy of the folder's blocks
    unreadable (a copy taken before stands for a block a flash disk remapped, or a file
    system snapshot), while another folder's files, and a restart, are untouched."""
    folders = {1: b"Documents", 2: b"Pictures", 3: None}  # node 3: not in a folder (key 0)
    s = Sealer(KEY)
    store = ContentStore(tmp_path / "content", sealer=s)
    s.folder_of = folders.get
    texts = {nid: f"the plain text of node {nid} ".encode() * 300 for nid in folders}
    for nid, text in texts.items():
        fd = store.open(nid)
        try:
            store.pwrite(fd, text, 0, nid)
        finally:
            os.close(fd)
    ids = {nid: sealing.key_id_of_path(store.path_of(nid)) for nid in folders}
    assert ids[3] == 0 and 0 != ids[1] != ids[2] != 0, ids
    assert sorted(os.listdir(tmp_path / "keys")) == sorted(f"{ids[n]:016x}" for n in (1, 2))
    taken = {nid: store.path(nid).read_bytes() for nid in folders}  # what a disk may keep

    def reads(sealer: Sealer, nid: int) -> bytes:
        (tmp_path / "copy").write_bytes(taken[nid])
        fd = os.open(tmp_path / "copy", os.O_RDONLY)
        try:
            return sealer.pread(fd, 1 << 20, 0)
        finally:
            os.close(fd)

    assert all(reads(s, nid) == texts[nid] for nid in folders)
    with pytest.raises(CorruptContent):  # the cache's content key alone opens no folder's file
        SealedReader(os.open(store.path_of(1), os.O_RDONLY), sealing.SealedKey(0, s.content_key)).pread(10, 0)
    s.folder_of = {**folders, 4: b"Documents"}.get
    big = os.urandom(6 * BLOCK)
    kept = store.open(4)  # a descriptor still open when the wipe comes
    store.pwrite(kept, big, 0, 4)
    assert s.pread(kept, 100, 5 * BLOCK) == big[5 * BLOCK:5 * BLOCK + 100]  # its header is kept now

    assert store.destroy(1) == 0, "a file a key erase covers was overwritten (slow, and needless)"
    assert store.destroy(3) == len(taken[3]), "a file under the content key must be overwritten"
    s._make_folder_key(b"Documents")  # a second key of the folder (two threads made one at once)
    assert s.erase_folder_keys(b"Documents") == 2
    assert os.listdir(tmp_path / "keys") == [f"{ids[2]:016x}"]
    assert not store.exists(1) and not store.exists(3)
    with pytest.raises(CorruptContent, match="wiped"):
        reads(s, 1)
    with pytest.raises(CorruptContent, match="wiped"):  # no header kept from before holds the key
        s.pread(kept, 100, 5 * BLOCK)
    os.close(kept)
    assert reads(s, 2) == texts[2]

    again = Sealer(KEY)  # the next start: the keys on the disk, opened with the cache's key
    ContentStore(tmp_path / "content", sealer=again)
    with pytest.raises(CorruptContent, match="wiped"):
        reads(again, 1)
    assert reads(again, 2) == texts[2]
    other = Sealer(OTHER_KEY)  # a key file opens with its cache's key only
    ContentStore(tmp_path / "content", sealer=other)
    with pytest.raises(CorruptContent):
        reads(other, 2)


def test_a_check_of_a_live_cache_changes_no_key_and_a_damaged_key_is_told(tmp_path, caplog):
    """``cache.check`` opens the store read-only beside a running daemon: a key the daemon is
    making (``.new``) stays. A key file that does not open is skipped with a warning, and
    its folder's files say which key they need."""
    s = Sealer(KEY)
    store = ContentStore(tmp_path / "content", sealer=s)
    s.folder_of = lambda node_id: b"Documents"
    fd = store.open(1)
    try:
        store.pwrite(fd, b"the plain text", 0, 1)
    finally:
        os.close(fd)
    keys = tmp_path / "keys"
    (keys / "00000000000000ab.new").write_bytes(b"being made")
    ContentStore(tmp_path / "content", sealer=Sealer(KEY), create=False)
    assert (keys / "00000000000000ab.new").exists(), "a read-only look removed a key being made"
    [key_file] = [p for p in keys.iterdir() if not p.name.endswith(".new")]
    key_file.write_bytes(b"\0" * len(key_file.read_bytes()))
    again = Sealer(KEY)
    ContentStore(tmp_path / "content", sealer=again)
    assert "not a folder key that opens with the cache's key" in caplog.text
    assert not (keys / "00000000000000ab.new").exists(), "the daemon's own start tidies a cut key"
    fd = os.open(store.path_of(1), os.O_RDONLY)
    try:
        with pytest.raises(CorruptContent, match=key_file.name):
            again.pread(fd, 100, 0)
    finally:
        os.close(fd)


def test_a_sealed_file_chunked_a_window_at_a_time_chunks_as_the_plain_file(tmp_path):
    """The chunker reads a sealed snapshot in windows; the cuts and digests must be the plain
    file's, whole and as segments (the two-core split)."""
    data = os.urandom(40 << 20)
    (tmp_path / "plain").write_bytes(data)
    s = Sealer(KEY)
    fd = _open(tmp_path / "sealed")
    try:
        for at in range(0, len(data), 8 << 20):
            s.pwrite(fd, data[at:at + (8 << 20)], at)
        reader = SealedReader(fd, s.key_of(fd))
        whole = chunker.chunk_buffer(data)
        assert len(whole) > 20
        assert chunker._chunk_sealed(reader, 0, None, None, window=2 * chunker.MAX_CHUNK) == whole
        assert chunker.chunk_segment(tmp_path / "sealed", 0, None, content_key=s.key_of(fd)) == whole
        for start, end in ((5_000_000, 29_000_000), (17 << 20, None)):
            assert (chunker._chunk_sealed(reader, start, end, None, window=2 * chunker.MAX_CHUNK)
                    == chunker.chunk_segment(tmp_path / "plain", start, end))
    finally:
        os.close(fd)


async def test_an_upload_from_a_sealed_snapshot_puts_its_plain_bytes(tmp_path):
    """The upstream's reads (whole and as a delta) take a ``SealedReader`` where a descriptor
    was: the server gets plain bytes."""
    from cscd.upstream.base import Extent
    from cscd.upstream.local import LocalUpstream

    server = tmp_path / "server"
    server.mkdir()
    up = LocalUpstream(server)
    s = Sealer(KEY)
    data = os.urandom(3 * BLOCK + 5)
    fd = _open(tmp_path / "sealed")
    try:
        s.pwrite(fd, data, 0)
        reader = SealedReader(fd, s.key_of(fd))
        entry = await up.upload(b"a.bin", reader, len(data), 1_700_000_000 * 10**9)
        assert (server / "a.bin").read_bytes() == data
        changed = bytearray(data)
        changed[BLOCK:BLOCK + 4] = b"EDIT"
        s.pwrite(fd, b"EDIT", BLOCK)
        plan = [Extent(0, BLOCK, 0), Extent(BLOCK, BLOCK), Extent(2 * BLOCK, len(data) - 2 * BLOCK, 2 * BLOCK)]
        await up.upload_delta(b"a.bin", reader, len(data), 1_700_000_001 * 10**9, plan=plan, expected=entry)
        assert (server / "a.bin").read_bytes() == bytes(changed)
    finally:
        os.close(fd)


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


# ---------------------------------------------------------------------- the sealed index


def _sealed_tree(path, sealer) -> tuple[Index, dict[str, int]]:
    """A sealed index holding a folder, two files with agreed server names, an attribute, an
    unrecorded upload and a conflict record, each with a name to look for on the disk."""
    ix = Index(path, sealer)
    with ix.env.begin(write=True) as txn:
        nodes.put(ix, txn, Node(ROOT_ID, 0, True, Flag.LISTED, 0o755, 0, 1, 1, 0, 0, 0, 0, 0, b"", b""))
        ids = {}
        for parent, name, is_dir in ((ROOT_ID, b"Documents", True), ("Documents", b"salaries-2026.ods", False),
                                     ("Documents", b"merger-plan.txt", False)):
            pid = parent if isinstance(parent, int) else ids[parent]
            node = Node(ix.allocate_id(txn), pid, is_dir, Flag.HYDRATED, 0o644, 0, 1, 1, 0, 0, 0, 0, 0, name, b"")
            nodes.put(ix, txn, node)
            nodes.link(ix, txn, node)
            if not is_dir:
                nodes.set_base(ix, txn, node, pid, RemoteEntry(name, False, 10, 1, 1, 7))
                nodes.put(ix, txn, node)
            ids[name.decode()] = node.id
        node = nodes.get(ix, txn, ids["merger-plan.txt"])
        attrs.set_local(ix, txn, node, b"user.project", b"codename-bluebird")
        nodes.put(ix, txn, node)
        unrecorded.add(ix, txn, Unrecorded(ids["Documents"], b"draft-layoffs.txt", node.id, Ours(3, 4, 5, False)))
    return ix, ids


def test_a_sealed_index_answers_like_a_plain_one_and_keeps_no_name_in_its_file(tmp_path):
    sealer = Sealer(KEY)
    ix, ids = _sealed_tree(tmp_path / "index", sealer)
    with ix.env.begin() as txn:
        docs = ids["Documents"]
        assert nodes.lookup_id(ix, txn, docs, b"merger-plan.txt") == ids["merger-plan.txt"]
        assert nodes.base_lookup_id(ix, txn, docs, b"salaries-2026.ods") == ids["salaries-2026.ods"]
        assert sorted(name for _, name in nodes.iter_children(ix, txn, docs)) == [
            b"merger-plan.txt", b"salaries-2026.ods"]
        walked = list(nodes.iter_base_children(ix, txn, docs))
        assert sorted(walked) == sorted([(b"merger-plan.txt", ids["merger-plan.txt"]),
                                         (b"salaries-2026.ods", ids["salaries-2026.ods"])])
        # a walk resumed after its first name gives the rest, as merges do in steps
        assert list(nodes.iter_base_children(ix, txn, docs, walked[0][0])) == walked[1:]
        node = nodes.get(ix, txn, ids["merger-plan.txt"])
        assert attrs.get(ix, txn, node) == {b"user.project": b"codename-bluebird"}
        assert [n.name for n in unrecorded.iter_all(ix, txn)] == [b"draft-layoffs.txt"]
    ix.close()
    assert check_cache(tmp_path, sealer) == []
    assert check_cache(tmp_path) == ["the index is sealed: check it with its key"]
    raw = (tmp_path / "index" / "data.mdb").read_bytes()
    for needle in (b"merger-plan", b"salaries", b"codename-bluebird", b"draft-layoffs", b"Documents"):
        assert needle not in raw, needle


def test_a_sealed_index_opens_with_its_key_only(tmp_path):
    ix, _ = _sealed_tree(tmp_path / "index", Sealer(KEY))
    ix.close()
    with pytest.raises(ConfigError, match="another key"):
        Index(tmp_path / "index", Sealer(OTHER_KEY))
    with pytest.raises(ConfigError, match="no key"):
        Index(tmp_path / "index")
    Index(tmp_path / "plain").close()
    with pytest.raises(ConfigError, match="not sealed"):
        Index(tmp_path / "plain", Sealer(KEY))


def test_a_plain_cache_sealed_in_place_keeps_every_entry(tmp_path):
    """``sealed_cache.seal``: the same answers from the sealed copy, and the plain file gone."""
    plain = Index(tmp_path / "index")
    with plain.env.begin(write=True) as txn:
        nodes.put(plain, txn, Node(ROOT_ID, 0, True, Flag.LISTED, 0o755, 0, 1, 1, 0, 0, 0, 0, 0, b"", b""))
        folder = Node(plain.allocate_id(txn), ROOT_ID, True, Flag.HYDRATED, 0o755, 0, 1, 1, 0, 0, 0, 0, 0,
                      b"Documents", b"")
        nodes.put(plain, txn, folder)
        nodes.link(plain, txn, folder)
        for i in range(30_000):  # more than one copy step
            node = Node(plain.allocate_id(txn), folder.id, False, Flag.HYDRATED, 0o644, 0, 1, 1, 0, 0, 0, 0, 0,
                        f"quarterly-{i}.txt".encode(), b"")
            nodes.put(plain, txn, node)
            nodes.link(plain, txn, node)
            nodes.set_base(plain, txn, node, folder.id, RemoteEntry(node.name, False, 10, 1, 1, node.id))
            nodes.put(plain, txn, node)
    plain.close()
    content = tmp_path / "content" / "00"
    content.mkdir(parents=True)
    (content / "0000000000000005").write_bytes(b"the plain content of a cached file" * 100)

    sealer = sealed_cache.seal(tmp_path, KEY)
    assert sealed_cache.is_sealed(tmp_path)
    assert check_cache(tmp_path, sealer) == []
    ix = Index(tmp_path / "index", sealer)
    with ix.env.begin() as txn:
        assert nodes.lookup_id(ix, txn, folder.id, b"quarterly-29999.txt") is not None
        assert len(list(nodes.iter_base_children(ix, txn, folder.id))) == 30_000
    ix.close()
    assert b"quarterly-" not in (tmp_path / "index" / "data.mdb").read_bytes()
    fd = os.open(tmp_path / "content" / "00" / "0000000000000005", os.O_RDONLY)
    try:
        assert sealer.pread(fd, 34, 0) == b"the plain content of a cached file"
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["content", "index", "sealed"]
    with pytest.raises(ConfigError, match="another key"):
        sealed_cache.open_sealed(tmp_path, OTHER_KEY)

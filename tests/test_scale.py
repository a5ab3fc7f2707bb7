"""The driver at many blocks (issue 38): what grows with the block count is one number a chunk
or a bit a block, never a Python object each; and it still finds exactly what it must.

The figures (10^5 to 10^7 blocks: time to the first block, the driver's memory, resume) come
from ``benchmarks/driver_compare.py``; here, small grids checked against independent answers.
"""
from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest

import emarray
from emarray.chunks import chunk_entries, chunk_index, stored_chunks
from emarray.engine import BlockGrid, Checkpoint, Read, Runner, Stage, Write, invalidate
from emarray.engine import checkpoint as cp
from emarray.engine import stages as engine_stages
from emarray.engine.checkpoint import PROGRESS_DIR, Bitmap, changed_regions, chunk_record
from emarray.errors import BlockFailedError

from .conftest import make_volume


def listing_by_keys(folder, counts):
    """The independent answer: every file's key, parsed one by one (the old listing)."""
    keys, sizes, mtimes = chunk_entries(folder)
    grid, other = [], []
    for k, s, m in zip(keys, sizes.tolist(), mtimes.tolist()):
        idx = chunk_index(k)
        if idx is not None and len(idx) == len(counts) and all(i < n for i, n in zip(idx, counts)):
            grid.append((int(np.ravel_multi_index(idx, counts)), s, m))
        else:
            other.append((k, s, m))
    return sorted(grid), sorted(other)


def put(folder, key, data=b"x"):
    path = folder / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.mark.parametrize("prefix,sep", [("c/", "/"), ("", "/"), ("", "."), ("c.", ".")])
@pytest.mark.parametrize("counts", [(3, 12, 11), (25,), (2, 3, 4, 12)])
def test_stored_chunks_equal_the_listing_of_every_key(tmp_path, prefix, sep, counts):
    """zarr v3's keys (c/1/2/3), v2's (1/2/3, 1.2.3), and keys that name no chunk."""
    rng = np.random.default_rng(len(counts))
    folder = tmp_path / "a"
    put(folder, "zarr.json", b"{}")
    n = int(np.prod(counts))
    for f in rng.choice(n, size=n // 2, replace=False):  # in random order; past 9: numbers
        idx = np.unravel_index(int(f), counts)
        put(folder, prefix + sep.join(str(int(i)) for i in idx), b"x" * int(rng.integers(1, 9)))
    # files that name no chunk: beside it, inside it, out of the grid, a killed write's
    put(folder, "notes.txt")
    put(folder, "c/0/extra.txt" if len(counts) > 1 else "c/extra.txt")
    put(folder, "c/" + "/".join(["0"] * (len(counts) - 1) + [str(counts[-1] + 4)]))
    put(folder, "c/" + "/".join(["0"] * len(counts)) + ".0123abcd.partial")
    put(folder, "c/" + "/".join(["0"] * (len(counts) - 1) + ["x9", "0"]))
    grid, other = listing_by_keys(folder, counts)
    assert len(grid) >= (n // 2 if prefix != "c." else 0) and len(other) >= 4
    for threads in (1, 3):
        got = stored_chunks(folder, counts, threads)
        assert got.flat.tolist() == [g[0] for g in grid]
        assert got.sizes.tolist() == [g[1] for g in grid]
        assert got.mtimes.tolist() == [g[2] for g in grid]
        assert got.other == other


def chunk_region(v, idx):
    return tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(idx, v.block_shape, v.shape))


def spans(regions):
    """Regions as a set of ((start, stop), ...) (slices cannot be hashed)."""
    return {tuple((s.start, s.stop) for s in r) for r in regions}


def test_changed_regions_are_exactly_the_chunks_rewritten_removed_or_added(tmp_path):
    a = np.arange(12 * 12 * 12, dtype=np.float32).reshape(12, 12, 12)
    a[8:] = 0  # the last slab of chunks is never stored (all fill value)
    v = make_volume(tmp_path / "v.zarr", a, 4)
    before = chunk_record(v)
    v.write(chunk_region(v, (0, 1, 2)), np.full((4, 4, 4), 7, np.float32))  # rewritten
    os.remove(tmp_path / "v.zarr" / "0" / "c" / "1" / "2" / "0")  # removed
    v.write(chunk_region(v, (2, 0, 1)), np.ones((4, 4, 4), np.float32))  # added
    want = spans(chunk_region(v, i) for i in [(0, 1, 2), (1, 2, 0), (2, 0, 1)])
    assert spans(changed_regions(v, before)) == want
    # a record an older emarray saved (every key as text) finds the same chunks
    keys, sizes, mtimes = _old_listing(before, v)
    legacy = {"keys": np.frombuffer("\n".join(keys).encode(), np.uint8), "sizes": sizes,
              "mtimes": mtimes, "block": list(v.block_shape), "shape": list(v.shape)}
    assert spans(changed_regions(v, legacy)) == want
    assert changed_regions(v, chunk_record(v)) == []


def _old_listing(record, v):
    """The keys, sizes and mtimes of ``record`` as the listing of keys an older emarray kept."""
    flat = cp.flat_of(record["runs"])
    counts = cp.grid_counts(v)
    keys = ["c/" + "/".join(str(int(i)) for i in np.unravel_index(f, counts)) for f in flat]
    return keys, record["sizes"], record["mtimes"]


def test_many_changed_chunks_are_merged_into_rows_that_hold_every_one(tmp_path, monkeypatch):
    monkeypatch.setattr(invalidate, "MAX_REGIONS", 4)
    v = make_volume(tmp_path / "v.zarr", np.zeros((8, 8, 16), np.uint8) + 1, 2)
    before = chunk_record(v)
    changed = [(0, 0, 1), (0, 0, 5), (0, 3, 2), (1, 2, 7), (3, 1, 0), (3, 1, 6)]
    for idx in changed:
        v.write(chunk_region(v, idx), np.full((2, 2, 2), 9, np.uint8))
    got = changed_regions(v, before)
    assert len(got) == 4  # one row per (z, y) that holds a changed chunk
    assert all(r[2] == slice(0, 16) for r in got)
    for idx in changed:
        want = chunk_region(v, idx)
        assert any(all(w.start >= g.start and w.stop <= g.stop for w, g in zip(want, r))
                   for r in got), idx
    monkeypatch.setattr(invalidate, "MAX_REGIONS", 1)  # then planes
    assert changed_regions(v, before) == [
        (slice(0, 2), slice(0, 8), slice(0, 16)), (slice(2, 4), slice(0, 8), slice(0, 16)),
        (slice(6, 8), slice(0, 8), slice(0, 16))]


class Shaped:
    def __init__(self, shape):
        self.shape, self.dtype, self.block_shape = shape, np.dtype("uint8"), shape


@pytest.mark.parametrize("seed", range(6))
def test_affected_blocks_equal_the_block_by_block_answer(seed):
    """Blocks that read a changed region, found by boxes in a mask: the same as asking each
    block whether its read region meets a changed one."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(5, 30, 3))
    grid = BlockGrid(shape, tuple(int(b) for b in rng.integers(2, 7, 3)))
    scale = tuple(Fraction(int(rng.choice([1, 1, 2, 3])), int(rng.choice([1, 2]))) for _ in shape)
    src_shape = tuple(max(1, int(np.ceil(s * f))) for s, f in zip(shape, scale))
    src = Shaped(src_shape)
    read = Read(src, halo=tuple(int(h) for h in rng.integers(0, 3, 3)), scale=scale,
                sides=str(rng.choice(["both", "high"])))
    out = Shaped(shape)
    st = Stage("s", lambda ctx, a: a, grid, [read], [Write(out)])
    regions = []
    for _ in range(int(rng.integers(1, 5))):
        lo = [int(rng.integers(0, n)) for n in src_shape]
        regions.append(tuple(slice(a, min(n, a + int(rng.integers(1, 4))))
                             for a, n in zip(lo, src_shape)))
    got = invalidate.affected_blocks(st, {invalidate.volume_key(src): regions})
    want = []
    for flat, idx in enumerate(grid.indices()):
        r = read.region(grid.region(idx))
        if any(all(a.start < b.stop and b.start < a.stop for a, b in zip(r, reg))
               for reg in regions):
            want.append(flat)
    assert got.tolist() == want


class Stop(RuntimeError):
    pass


def test_resume_of_a_large_grid_computes_exactly_the_blocks_not_saved_done(tmp_path, monkeypatch):
    """A job of 2,304 one-voxel blocks stopped part way, an input chunk changed, resumed:
    the resumed run computes exactly the blocks the saved progress does not count done plus
    the done ones that read the changed chunk, and the output equals NumPy's."""
    rng = np.random.default_rng(0)
    a = rng.random((9, 16, 16)).astype(np.float32)
    src = make_volume(tmp_path / "p.zarr", a, 1)
    real = engine_stages.run_block
    seen: list[int] = []

    def stopping(st, index):
        if len(seen) == 900:
            raise Stop("stopped")
        seen.append(int(np.ravel_multi_index(index, st.grid.counts)))
        return real(st, index)

    monkeypatch.setattr(engine_stages, "run_block", stopping)
    with pytest.raises(BlockFailedError, match="stopped"):
        emarray.threshold(src, tmp_path / "t.zarr", 0.5, scheduler="synchronous", retries=0)
    done = Checkpoint(tmp_path / "t.zarr" / PROGRESS_DIR).load("threshold", a.size)[0]
    saved = {i for i in range(a.size) if done[i]}
    assert saved == set(seen)  # every block that returned, and only those
    a[3, 4, 5] = 0.9 if a[3, 4, 5] < 0.5 else 0.1  # a done block's input chunk changes
    src.write((slice(3, 4), slice(4, 5), slice(5, 6)), a[3:4, 4:5, 5:6])
    changed = int(np.ravel_multi_index((3, 4, 5), a.shape))
    assert changed in saved
    seen.clear()
    monkeypatch.setattr(engine_stages, "run_block", lambda st, index: (
        seen.append(int(np.ravel_multi_index(index, st.grid.counts))), real(st, index))[1])
    out = emarray.threshold(src, tmp_path / "t.zarr", 0.5, scheduler="synchronous",
                            resume=True)
    assert sorted(seen) == sorted(set(range(a.size)) - saved | {changed})
    np.testing.assert_array_equal(out.read(), (a > 0.5).astype(out.dtype))


def test_a_file_named_with_a_non_ascii_digit_names_no_chunk():
    """``"²".isdigit()`` is true, but ``int("²")`` raises: such a file in an input stopped a
    resumed job with a ValueError."""
    assert chunk_index("c/0/²/1") is None and chunk_index("1.²") is None
    assert chunk_index("c/0/12/1") == (0, 12, 1)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 12345])
def test_a_bitmap_counts_and_fills_as_a_bit_a_block_does(n):
    """Counted a byte at a time (an unpacked copy was a byte a block: 9.5 MiB at 10^7)."""
    r = np.random.default_rng(n).random(n) < 0.3
    b = cp.Bitmap(n, np.packbits(r))
    assert b.count() == int(r.sum())
    assert b.get_many(np.arange(n)).tolist() == r.tolist()
    full = cp.Bitmap.full(n)
    assert full.count() == n and full.bits.tobytes() == np.packbits(np.ones(n, bool)).tobytes()
    full.unset_many(np.flatnonzero(~r))
    assert full.bits.tobytes() == b.bits.tobytes()


def test_tasks_are_submitted_through_a_bounded_window():
    consumed = []

    def calls():
        for i in range(10_000):
            consumed.append(i)
            yield (_record_max, (i, consumed))

    with Runner("threads", workers=2, window=16) as r:
        seen = r.run(calls(), total=10_000, combine=max)
    assert seen <= 16 + 2  # at most the window ahead of the first tasks to finish
    with Runner("synchronous") as r:
        assert r.run(((pow, (2, i)) for i in range(5))) == [1, 2, 4, 8, 16]


def _record_max(i, consumed):
    return len(consumed) - i  # how far submission ran ahead of this task


def test_a_synthetic_volume_of_many_blocks_starts_at_once(tmp_path):
    import tracemalloc
    tracemalloc.start()
    emarray.datasets.synthetic(tmp_path, (8, 64, 128), chunks=(1, 4, 8), kinds=("truth",),
                               workers=2)  # 2,048 blocks
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 2**20, peak
    assert emarray.open_volume(tmp_path / "truth.zarr").attrs["emarray"]["complete"]


def test_the_driver_keeps_a_bit_per_block():
    import tracemalloc
    n = 2**30 + 5
    tracemalloc.start()
    done = Bitmap(n)
    for i in (0, 7, 8, n - 1):
        done.set(i)
    first = list(zip(range(5), done.missing()))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert done.bits.nbytes == (n + 7) // 8  # 128 MiB for a billion blocks, not 9 GiB
    assert peak < done.bits.nbytes + 16 * 2**20  # one slice of 2**20 blocks unpacked at a time
    assert [i for _, i in first] == [1, 2, 3, 4, 5]
    assert done[7] and not done[6] and done.count() == 4

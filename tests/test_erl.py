"""Expected run length: hand-made cases with answers worked out here (a skeleton split in
two, two skeletons merged, a node in the background), an independent implementation (a walk
along each skeleton, written here) on random trees, and the command end to end, reading
only the chunks that hold skeleton nodes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import emarray
from emarray.cli import cli
from emarray.ops.erl import expected_run_length, segments_at

from .conftest import make_volume


def line(n, start=(0.0, 0.0, 0.0), step=(1.0, 0.0, 0.0)):
    """n nodes one step apart, and the n - 1 edges between them."""
    v = np.asarray(start) + np.arange(n)[:, None] * np.asarray(step)
    return v, np.c_[np.arange(n - 1), np.arange(1, n)]


def test_a_skeleton_split_in_two():
    # 10 nodes, 9 edges of length 1; segments change between nodes 4 and 5: runs 4 and 4,
    # the cut edge in neither; ERL = (4**2 + 4**2) / 9
    r = expected_run_length([line(10)], [np.array([1] * 5 + [2] * 5)])
    assert r.erl == pytest.approx(32 / 9) and r.erl_merge == pytest.approx(32 / 9)
    assert r.total == 9 and r.merged == []
    assert sorted(r.skeletons[0]["runs"]) == [(4.0, 1), (4.0, 2)]
    # unsplit: one run of 9
    assert expected_run_length([line(10)], [np.full(10, 5)]).erl == pytest.approx(9)
    # edges of length 2 (step 2): everything doubles
    r = expected_run_length([line(10, step=(0, 2, 0))], [np.array([1] * 5 + [2] * 5)])
    assert r.erl == pytest.approx(64 / 18 * 2)


def test_two_skeletons_merged_count_zero_in_the_merge_penalised_erl():
    a, b, c = line(10), line(5, start=(0, 5, 0)), line(7, start=(0, 9, 0))
    segs = [np.full(10, 7), np.full(5, 7), np.full(7, 3)]  # segment 7 holds a and b
    r = expected_run_length([a, b, c], segs)
    # plain: runs 9, 4 and 6 of 19: (81 + 16 + 36) / 19 = 7
    assert r.erl == pytest.approx(7.0)
    # merge-penalised: a and b's runs lie in the merged segment 7: only c's 6 counts
    assert r.erl_merge == pytest.approx(36 / 19)
    assert r.merged == [7]
    # a split and a merge together: b split into segment 7 (merged with a) and 8
    segs = [np.full(10, 7), np.array([7, 7, 8, 8, 8]), np.full(7, 3)]
    r = expected_run_length([a, b, c], segs)
    assert r.erl == pytest.approx((81 + 1 + 4 + 36) / 19)
    assert r.erl_merge == pytest.approx((4 + 36) / 19)


def test_background_nodes_cut_runs_and_never_merge():
    v, e = line(7)
    seg = np.array([4, 4, 0, 4, 4, 4, 0])  # background at nodes 2 and 6
    r = expected_run_length([(v, e)], [seg])
    # runs: nodes 0-1 (1) and 3-5 (2); edges touching background count in no run
    assert r.erl == pytest.approx((1 + 4) / 6)
    # two skeletons both touching background (0) are not a merge
    r = expected_run_length([(v, e), line(3)], [seg, np.array([0, 9, 9])])
    assert r.merged == [] and r.erl == r.erl_merge
    # a branching skeleton: a Y of three arms of 2 edges; one arm in another segment
    v = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 1, 0], [4, 2, 0], [3, -1, 0],
                  [4, -2, 0]], float)
    e = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [2, 5], [5, 6]])
    r = expected_run_length([(v, e)], [np.array([1, 1, 1, 1, 1, 2, 2])])
    d = np.sqrt(2)
    # runs: 0-1-2-3-4 (2 + 2d) and 5-6 (d); the edge 2-5 is cut
    assert r.erl == pytest.approx(((2 + 2 * d) ** 2 + d ** 2) / (2 + 4 * d))


def walk_reference(skeletons, segments):
    """An independent ERL: from each node, walk along edges whose two ends share its segment
    (a depth-first search), summing edge lengths; a segment that holds nodes of two skeletons
    makes its runs count 0 in the second number."""
    owners = {}
    for k, seg in enumerate(segments):
        for s in set(seg.tolist()) - {0}:
            owners.setdefault(s, set()).add(k)
    total = sq = sqm = 0.0
    for (v, e), seg in zip(skeletons, segments):
        nbr = {i: [] for i in range(len(v))}
        for a, b in e.tolist():
            nbr[a].append(b)
            nbr[b].append(a)
            total += float(np.linalg.norm(v[a] - v[b]))
        seen_edges = set()
        for start in range(len(v)):
            if seg[start] == 0:
                continue
            run, stack = 0.0, [start]
            while stack:
                a = stack.pop()
                for b in nbr[a]:
                    key = (min(a, b), max(a, b))
                    if seg[b] == seg[a] and key not in seen_edges:
                        seen_edges.add(key)
                        run += float(np.linalg.norm(v[a] - v[b]))
                        stack.append(b)
            sq += run * run
            if len(owners.get(int(seg[start]), ())) < 2:
                sqm += run * run
    return sq / total, sqm / total


def test_equal_to_a_walk_along_random_trees():
    rng = np.random.default_rng(0)
    for trial in range(30):
        skeletons, segments = [], []
        for _ in range(rng.integers(1, 5)):
            n = int(rng.integers(2, 40))
            v = rng.normal(size=(n, 3)) * 3
            parent = [int(rng.integers(0, i)) for i in range(1, n)]
            skeletons.append((v, np.c_[parent, np.arange(1, n)]))
            segments.append(rng.integers(0, 6, n))
        r = expected_run_length(skeletons, segments)
        want = walk_reference(skeletons, segments)
        assert (r.erl, r.erl_merge) == pytest.approx(want), trial


def test_erl_command_reads_only_chunks_with_nodes(tmp_path, monkeypatch):
    seg = np.zeros((20, 40, 40), np.uint16)
    seg[:, :, :20] = 5
    seg[:, :, 20:] = 6
    seg[:, 30:, :] = 7   # skeleton b's segment
    v = make_volume(tmp_path / "seg.zarr", seg, (10, 10, 10), voxel_size=(4.0, 2.0, 2.0))
    folder = tmp_path / "truth"
    folder.mkdir()
    # a: along x at z=10, y=10 (voxels): x 5..34 crosses 5 | 6 between x=19 and 20;
    # physical: voxel centres (index + 0.5) * voxel size, x y z, in nanometres (the unit)
    xs = np.arange(5, 35)
    rows = [f"{k + 1} 0 {(x + .5) * 2} {(10 + .5) * 2} {(10 + .5) * 4} 1 {k if k else -1}"
            for k, x in enumerate(xs)]
    (folder / "a.swc").write_text("# unit: nanometer\n" + "\n".join(rows) + "\n")
    # b: along y at x=5 from y=31 to 38, all in 7; its last node outside the volume in z
    rows = [f"{k + 1} 0 {5.5 * 2} {(y + .5) * 2} {10.5 * 4} 1 {k if k else -1}"
            for k, y in enumerate(range(31, 39))] + [f"9 0 11 77 {30 * 4} 1 8"]
    (folder / "b.swc").write_text("\n".join(rows) + "\n")  # no unit: the volume's (nm)
    reads = []
    real = type(v).read

    def spy(self, region, *a, **k):
        reads.append(region)
        return real(self, region, *a, **k)
    monkeypatch.setattr(type(v), "read", spy)
    r = emarray.erl(v, folder, out=tmp_path / "erl")
    # a: 29 edges of 2 nm; nodes x 5..19 in 5 (14 edges), x 20..34 in 6 (14 edges), one cut;
    # b: 7 edges of 2 nm in 7, then a cut to a node outside (background); its length counts
    d_out = float(np.linalg.norm([0, 77 - 38.5 * 2, 30 * 4 - 10.5 * 4]))
    total = 29 * 2 + 7 * 2 + d_out
    assert r.total == pytest.approx(total)
    assert r.erl == pytest.approx((28 ** 2 + 28 ** 2 + 14 ** 2) / total)
    assert r.erl_merge == r.erl and r.merged == []
    # only chunks holding nodes were read, each one chunk (10,10,10) and once
    got = {tuple(s.start // 10 for s in reg) for reg in reads}
    assert got == {(1, 1, 0), (1, 1, 1), (1, 1, 2), (1, 1, 3), (1, 3, 0)}, got
    assert len(reads) == len(got) and all(s.stop - s.start == 10 for reg in reads
                                          for s in reg)
    doc = json.loads((tmp_path / "erl" / "erl.json").read_text())
    assert doc["erl"] == pytest.approx(r.erl) and set(doc["skeletons"]) == {"a", "b"}
    monkeypatch.undo()
    res = CliRunner().invoke(cli, ["erl", str(tmp_path / "seg.zarr"), str(folder)])
    assert res.exit_code == 0, res.output
    assert f"ERL {r.erl:,.6g}" in res.output


def test_a_perfect_segmentation_has_one_run_per_skeleton(tmp_path):
    from .skeleton_shapes import VOXEL, neurites
    pytest.importorskip("kimimaro")
    lab = neurites()
    v = make_volume(tmp_path / "l.zarr", lab, (24, 48, 48), voxel_size=VOXEL)
    emarray.skeleton(v, tmp_path / "s")
    r = emarray.erl(v, tmp_path / "s")
    lengths = [s["length"] for s in r.skeletons]
    assert len(lengths) == 4 and all(len(s["runs"]) == 1 for s in r.skeletons)
    assert r.erl == pytest.approx(sum(L * L for L in lengths) / sum(lengths))
    # all of it one segment: every skeleton merged with the others
    one = make_volume(tmp_path / "one.zarr", (lab > 0).astype(np.uint8), 48, voxel_size=VOXEL)
    r = emarray.erl(one, tmp_path / "s")
    assert r.merged == [1] and r.erl_merge == 0 and r.erl > 0


def test_segments_at_points_outside_are_background(tmp_path):
    a = np.arange(60, dtype=np.uint32).reshape(3, 4, 5) + 1
    v = make_volume(tmp_path / "a.zarr", a, (2, 2, 2))
    pts = np.array([[0, 0, 0], [2, 3, 4], [1, 2, 3], [-1, 0, 0], [3, 0, 0], [0, 4, 0]])
    np.testing.assert_array_equal(segments_at(v, pts), [1, 60, a[1, 2, 3], 0, 0, 0])

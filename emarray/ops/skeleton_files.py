"""Skeleton files: neuroglancer's precomputed skeleton source and SWC, written and read.

A **precomputed** skeleton source is a folder with an ``info`` document
(``"@type": "neuroglancer_skeletons"``, one float32 vertex attribute ``radius``) and one
binary file per object named by its id: little-endian uint32 vertex count, uint32 edge count,
float32 x, y, z per vertex (nanometres), uint32 vertex pairs per edge, then float32 radius per
vertex. An **SWC** file holds one line per vertex, ``n type x y z radius parent`` (``parent``
-1 for a root), every parent listed before its children; emarray writes its length unit in a
``# unit:`` header line, and reads it back (files from elsewhere without one are taken to be in
the unit of the volume they are compared with).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError

INFO_TYPE = "neuroglancer_skeletons"


def encode_precomputed(vertices: np.ndarray, edges: np.ndarray, radius: np.ndarray) -> bytes:
    """One object's skeleton in neuroglancer's precomputed encoding (``vertices``: x, y, z
    in nanometres)."""
    v = np.ascontiguousarray(vertices, "<f4").reshape(-1, 3)
    e = np.ascontiguousarray(edges, "<u4").reshape(-1, 2)
    r = np.ascontiguousarray(radius, "<f4").reshape(-1)
    if len(r) != len(v):
        raise ValueError("one radius per vertex")
    head = np.array([len(v), len(e)], "<u4")
    return head.tobytes() + v.tobytes() + e.tobytes() + r.tobytes()


def decode_precomputed(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(vertices, edges, radius)`` of a precomputed skeleton file written with one float32
    ``radius`` attribute (as :func:`encode_precomputed` writes)."""
    nv, ne = (int(n) for n in np.frombuffer(data[:8], "<u4"))
    at = 8
    v = np.frombuffer(data, "<f4", 3 * nv, at).reshape(nv, 3)
    at += 12 * nv
    e = np.frombuffer(data, "<u4", 2 * ne, at).reshape(ne, 2)
    at += 8 * ne
    r = np.frombuffer(data, "<f4", nv, at) if len(data) >= at + 4 * nv else np.zeros(nv, "<f4")
    return v.astype(np.float64), e.astype(np.int64), r.astype(np.float64)


def tree_order(n: int, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The vertices of a forest in an order where every parent comes before its children, and
    each one's parent (-1 for a root; a root is the lowest-numbered end of its tree).
    Edges that would close a cycle are left out."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order
    e = np.asarray(edges, np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)).tocsr()
    graph = graph + graph.T
    degree = np.diff(graph.indptr)
    seen = np.zeros(n, bool)
    order, parent = [], np.full(n, -1, np.int64)
    starts = np.concatenate([np.flatnonzero(degree == 1), np.arange(n)])
    for s in starts:
        if seen[s]:
            continue
        nodes, preds = breadth_first_order(graph, int(s), directed=False,
                                           return_predecessors=True)
        seen[nodes] = True
        order.append(nodes)
        parent[nodes] = np.where(preds[nodes] < 0, -1, preds[nodes])
    return (np.concatenate(order) if order else np.empty(0, np.int64)), parent


def to_swc(vertices: np.ndarray, edges: np.ndarray, radius: np.ndarray,
           header: list[str]) -> str:
    """One object's skeleton as SWC text (``vertices``: x, y, z; ``header``: comment lines)."""
    order, parent = tree_order(len(vertices), edges)
    number = np.empty(len(vertices), np.int64)
    number[order] = np.arange(1, len(order) + 1)
    lines = [f"# {h}" for h in header]
    for i in order.tolist():
        x, y, z = (float(c) for c in vertices[i])
        p = int(number[parent[i]]) if parent[i] >= 0 else -1
        lines.append(f"{int(number[i])} 0 {x:.6g} {y:.6g} {z:.6g} {float(radius[i]):.6g} {p}")
    return "\n".join(lines) + "\n"


def read_swc(text: str, name: str = "swc") -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                    str | None]:
    """``(vertices, edges, radius, unit)`` of SWC text (``unit`` from a ``# unit:`` line, or
    None); a malformed line is refused naming ``name`` and the line."""
    from .._normalize import parse_unit
    unit = None
    rows = []
    for k, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("#"):
            body = s[1:].strip()
            if body.lower().startswith("unit:"):
                unit = parse_unit(body.split(":", 1)[1].strip())
            continue
        if not s:
            continue
        parts = s.split()
        try:
            rows.append((int(parts[0]), float(parts[2]), float(parts[3]), float(parts[4]),
                         float(parts[5]), int(parts[6])))
        except (IndexError, ValueError):
            raise InvalidArgumentError(f"{name} line {k} is not an SWC row "
                                       f"(n type x y z radius parent): {s!r}") from None
    index = {r[0]: i for i, r in enumerate(rows)}
    v = np.array([r[1:4] for r in rows], np.float64).reshape(-1, 3)
    radius = np.array([r[4] for r in rows], np.float64)
    edges = []
    for i, r in enumerate(rows):
        if r[5] != -1:
            if r[5] not in index:
                raise InvalidArgumentError(f"{name}: vertex {r[0]} names a parent {r[5]} that "
                                           "is not in the file")
            edges.append((index[r[5]], i))
    return v, np.array(edges, np.int64).reshape(-1, 2), radius, unit


def info_document(labels: str, fmt: str, unit: str) -> dict[str, Any]:
    """The ``info`` of a skeleton folder: neuroglancer's type and attribute (precomputed), and
    what emarray made it from (``emarray view`` finds the labels of the folder there)."""
    doc: dict[str, Any] = {"emarray": {"labels": labels, "format": fmt, "unit": unit}}
    if fmt == "precomputed":
        doc = {"@type": INFO_TYPE, "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
               "vertex_attributes": [{"id": "radius", "data_type": "float32",
                                      "num_components": 1}], **doc}
    return doc


def read_info(folder: Path) -> dict[str, Any] | None:
    """A precomputed skeleton folder's ``info`` (None when ``folder`` is not one)."""
    try:
        doc = json.loads((folder / "info").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("@type") == INFO_TYPE else None


def read_skeletons(folder: str | os.PathLike, unit: str) -> Iterator[tuple[str, np.ndarray,
                                                                            np.ndarray]]:
    """Every skeleton in ``folder`` (a precomputed source or ``.swc`` files) as
    ``(name, vertices, edges)``, the vertices x, y, z in ``unit`` (precomputed sources are in
    nanometres; an SWC file in its ``# unit:`` or else in ``unit``)."""
    from .._normalize import micrometres
    path = Path(folder)
    if not path.is_dir():
        raise InvalidArgumentError(f"no skeleton folder at {os.fspath(folder)!r}")
    scale_nm = 1e-3 / micrometres(unit)
    if read_info(path) is not None:
        for f in sorted(path.iterdir(), key=lambda p: p.name):
            if f.is_file() and f.name.lstrip("-").isdigit():
                v, e, _ = decode_precomputed(f.read_bytes())
                yield f.name, v * scale_nm, e
        return
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".swc" and p.is_file())
    if not files:
        raise InvalidArgumentError(f"{os.fspath(folder)!r} holds no skeletons: give a folder "
                                   "made by emarray skeleton, or of .swc files")
    for f in files:
        v, e, _, own = read_swc(f.read_text(), f.name)
        if own is not None:
            v = v * (micrometres(own) / micrometres(unit))
        yield f.stem, v, e

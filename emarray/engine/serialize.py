"""Progress and partial results as data that cannot run code: JSON for the structure, NumPy
``.npz`` (read with ``allow_pickle=False``) for the arrays.

A job's saved progress lives in its output folder, where anyone who can write there can put a
file; un-pickling it would run whatever that file says. What a stage folds (histograms, tables,
lists of block facts) is a tree of plain values and arrays, which this module stores in one
``.npz`` file: the tree as JSON in the entry ``tree``, each array as its own entry. Object arrays
are refused when saving and cannot be loaded.

>>> import numpy as np
>>> blob = dumps({"hist": np.arange(3), "blocks": [((0, 1), 2.5)], "n": 7, "t": None})
>>> loads(blob)["blocks"], loads(blob)["hist"].tolist()
([((0, 1), 2.5)], [0, 1, 2])
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any, BinaryIO

import numpy as np

from ..errors import CorruptStateError

_TREE = "tree"


def dumps(obj: Any) -> bytes:
    """``obj`` (None, bool, int, float, str, lists, tuples, str-keyed dicts, NumPy arrays and
    scalars) as the bytes of one ``.npz`` file."""
    buf = io.BytesIO()
    dump(obj, buf)
    return buf.getvalue()


def dump(obj: Any, file: BinaryIO) -> None:
    """Write :func:`dumps`'s bytes of ``obj`` to the open ``file``, array by array (no copy of
    them all in memory)."""
    arrays: dict[str, np.ndarray] = {}

    def enc(v: Any) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, np.generic):
            if isinstance(v, float) and not np.isfinite(v):
                return {"f": repr(v)}  # JSON has no nan/inf
            return v
        if isinstance(v, np.generic):
            return {"s": _array_ref(np.asarray(v).reshape(1), arrays)}
        if isinstance(v, np.ndarray):
            return {"a": _array_ref(v, arrays)}
        if isinstance(v, tuple):
            return {"t": [enc(x) for x in v]}
        if isinstance(v, list):
            return [enc(x) for x in v]
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                return {"dk": [[enc(k), enc(x)] for k, x in v.items()]}
            return {"d": {k: enc(x) for k, x in v.items()}}
        raise TypeError(f"cannot save a {type(v).__name__} in emarray's progress")

    tree = json.dumps(enc(obj), allow_nan=False).encode()
    entries: dict[str, Any] = {_TREE: np.frombuffer(tree, np.uint8), **arrays}
    np.savez(file, **entries)


def _array_ref(a: np.ndarray, arrays: dict[str, np.ndarray]) -> str:
    if a.dtype.hasobject:
        raise TypeError("cannot save an object array in emarray's progress")
    key = f"a{len(arrays)}"
    arrays[key] = a
    return key


def loads(data: bytes | os.PathLike, where: str = "a progress file") -> Any:
    """The value :func:`dumps` saved (its bytes, or the file that holds them); a damaged or
    foreign file raises :class:`CorruptStateError` naming ``where``."""
    try:
        with np.load(io.BytesIO(data) if isinstance(data, bytes) else data,
                     allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        tree = json.loads(bytes(arrays.pop(_TREE)).decode())
        return _decode(tree, arrays)
    except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError,
            zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise CorruptStateError(
            f"{where} is damaged or not emarray's ({type(exc).__name__}: {str(exc)[:120]}); "
            "remove it to start that job again") from None


def _decode(v: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(v, list):
        return [_decode(x, arrays) for x in v]
    if not isinstance(v, dict):
        return v
    if len(v) != 1:
        raise ValueError(f"unexpected entry {sorted(v)[:3]}")
    (tag, x), = v.items()
    if tag == "a":
        return arrays[x]
    if tag == "s":
        return arrays[x][0]
    if tag == "t":
        return tuple(_decode(y, arrays) for y in x)
    if tag == "d":
        return {k: _decode(y, arrays) for k, y in x.items()}
    if tag == "dk":
        return {_decode(k, arrays): _decode(y, arrays) for k, y in x}
    if tag == "f":
        return float(x)
    raise ValueError(f"unexpected tag {tag!r}")

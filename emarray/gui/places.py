"""The folders ``emarray gui`` serves, and the one rule for every path it is given or shows:
inside one of them once every symlink is resolved (``emarray view``'s rule for its data)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError


class Folders:
    """The named folders (real paths, in the order given)."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        roots: list[Path] = []
        for p in paths or ["."]:
            real = Path(os.path.realpath(p))
            if not real.is_dir():
                raise InvalidArgumentError(f"gui serves folders; {os.fspath(p)!r} is not one")
            if real not in roots:
                roots.append(real)
        self.roots = roots

    def named(self) -> str:
        return ", ".join(map(str, self.roots))

    def home(self, path: Path) -> Path:
        """The named folder that holds the (real) ``path``."""
        for r in self.roots:
            if path == r or r in path.parents:
                return r
        raise InvalidArgumentError(f"{path} is outside the folders this gui serves")

    def resolve(self, text: Any, what: str = "path") -> Path:
        """``text`` (absolute, or relative to the first folder) as a real path inside the
        folders, or one line saying why not (a URL, outside, or a link that leaves them)."""
        if isinstance(text, os.PathLike):
            text = os.fspath(text)
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgumentError(f"{what}: give a path, got {text!r}")
        text = text.strip()
        if "://" in text:
            raise InvalidArgumentError(
                f"{what} {text!r}: the gui works on the folders it serves, not URLs")
        given = Path(text) if os.path.isabs(text) else self.roots[0] / text
        real = Path(os.path.realpath(given))
        for r in self.roots:
            if real == r or r in real.parents:
                return real
        how = f" (links resolved: {real})" if real != Path(os.path.abspath(given)) else ""
        raise InvalidArgumentError(f"{what} {text!r} is outside the folders this gui serves "
                                   f"({self.named()}){how}")

    def shown(self, path: Path | str) -> str:
        """``path`` as the page shows it: the folder's name and the path inside it."""
        p = Path(path)
        for r in self.roots:
            if p == r:
                return r.name or str(r)
            if r in p.parents:
                return f"{r.name}/{p.relative_to(r).as_posix()}"
        return str(p)

    def browse(self, text: str | None) -> dict[str, Any]:
        """One folder's entries for the file browser (``None``: the named folders); hidden
        entries left out, links that leave the folders marked and not followed."""
        if not text:
            return {"path": None, "parent": None,
                    "entries": [{"name": str(r), "path": str(r), "dir": True} for r in self.roots]}
        folder = self.resolve(text)
        if not folder.is_dir():
            raise InvalidArgumentError(f"{text!r} is not a folder")
        entries = []
        for e in sorted(os.scandir(folder), key=lambda e: e.name.lower()):
            if e.name.startswith("."):
                continue
            path = folder / e.name
            try:
                self.resolve(path)
                inside = True
            except InvalidArgumentError:
                inside = False
            isdir = inside and path.is_dir()
            entries.append({"name": e.name, "path": str(path), "dir": isdir,
                            "volume": isdir and (path / "zarr.json").is_file(),
                            "outside": not inside})
        parent = folder.parent if folder not in self.roots else None
        return {"path": str(folder), "parent": str(parent) if parent else None,
                "entries": entries}

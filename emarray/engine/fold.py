"""Summaries of blocks folded as they arrive, in a binary tree."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


class TreeFold:
    """Fold summaries pairwise in a binary tree as they arrive (a binary counter of partials).

    The driver holds at most log2(n) partial results, and a combine that builds a new object
    (concatenating lists of equivalences, say) costs O(n log n) in all, not O(n^2).
    """

    def __init__(self, combine: Callable[[Any, Any], Any], state: list | None = None):
        self.combine = combine
        self.stack: list[tuple[int, Any]] = list(state or [])

    def add(self, value: Any) -> None:
        rank = 0
        while self.stack and self.stack[-1][0] == rank:
            value = self.combine(self.stack.pop()[1], value)
            rank += 1
        self.stack.append((rank, value))

    def result(self) -> Any:
        acc = None
        for _, v in reversed(self.stack):
            acc = v if acc is None else self.combine(v, acc)
        return acc

"""zarr's :class:`~zarr.storage.FsspecStore`, refusing writes under an output whose lock its job
lost (:func:`emarray.storage.revoke`): such a job stops at its next chunk write."""
from __future__ import annotations

from zarr.storage import FsspecStore

from . import storage


class GuardedStore(FsspecStore):
    """An FsspecStore whose every write and delete first asks :func:`storage.check_writable`."""

    def _check_writable(self) -> None:
        super()._check_writable()
        storage.check_writable(self.path)

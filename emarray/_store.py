"""zarr's :class:`~zarr.storage.FsspecStore`, refusing writes under an output whose lock its job
lost (:func:`emarray.revoked.revoke`): such a job stops at its next chunk write."""
from __future__ import annotations

from zarr.storage import FsspecStore

from .revoked import check_writable


class GuardedStore(FsspecStore):
    """An FsspecStore whose every write and delete first asks :func:`~emarray.revoked.check_writable`."""

    def _check_writable(self) -> None:
        super()._check_writable()
        check_writable(self.path)

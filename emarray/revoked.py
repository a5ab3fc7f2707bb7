"""Outputs whose lock their job lost: every write and delete in this process under such an
output is refused from then on (the zarr store and the progress folders ask here first), so a
job that lost its lock stops at its next write instead of writing on."""
from __future__ import annotations

from .errors import OutputLockedError

_REVOKED: dict[str, str] = {}


def _prefix(url: str) -> str:
    return (url.split("://", 1)[1] if "://" in url else url).rstrip("/") + "/"


def revoke(url: str, why: str) -> None:
    """From now on, refuse (:class:`~emarray.errors.OutputLockedError` saying ``why``) every
    write and delete in this process under ``url``: its job lost the output's lock."""
    _REVOKED[_prefix(url)] = why


def unrevoke(url: str) -> None:
    _REVOKED.pop(_prefix(url), None)


def check_writable(url: str) -> None:
    """Raise the error of :func:`revoke` when ``url`` lies under a revoked output."""
    if _REVOKED:
        here = _prefix(url)
        for prefix, why in list(_REVOKED.items()):
            if here.startswith(prefix):
                raise OutputLockedError(why)

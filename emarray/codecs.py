"""The codecs emarray writes chunks with: a compression by name, and a crc32c checksum after it
(so a damaged chunk is named, never read as values)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import InvalidArgumentError

#: the compressions an output may be written with
COMPRESSIONS = ("zstd", "blosc-zstd", "blosc-lz4", "gzip", "none")


def compressor_codecs(compression: str, level: int | None = None) -> tuple:
    """The zarr v3 codecs for a compression name (one of :data:`COMPRESSIONS`)."""
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec
    name = str(compression).lower()
    if name == "zstd":
        return (ZstdCodec(level=3 if level is None else level),)
    if name in ("blosc-zstd", "blosc-lz4"):
        cname: Any = name.split("-")[1]
        return (BloscCodec(cname=cname, clevel=5 if level is None else level,
                           shuffle="shuffle"),)
    if name == "gzip":
        return (GzipCodec(level=5 if level is None else level),)
    if name == "none":
        return ()
    raise InvalidArgumentError(f"compression must be one of {', '.join(COMPRESSIONS)}, "
                               f"got {compression!r}")


def with_checksum(codecs: Sequence[Any]) -> tuple:
    """``codecs`` (bytes-to-bytes, after the serializer) ending in zarr's ``crc32c`` codec.

    >>> [type(c).__name__ for c in with_checksum(compressor_codecs("zstd"))]
    ['ZstdCodec', 'Crc32cCodec']
    >>> len(with_checksum(with_checksum(())))
    1
    """
    from zarr.codecs import Crc32cCodec
    codecs = tuple(codecs)
    return codecs if codecs and isinstance(codecs[-1], Crc32cCodec) else codecs + (Crc32cCodec(),)

"""Normalise user arguments early, so that bad input fails before any work starts."""
from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from .errors import InvalidArgumentError

#: Spatial units allowed by OME-NGFF 0.5 (UDUNITS-2 names), plus common abbreviations.
SPACE_UNITS = (
    "angstrom", "attometer", "centimeter", "decimeter", "exameter", "femtometer", "foot",
    "gigameter", "hectometer", "inch", "kilometer", "megameter", "meter", "micrometer", "mile",
    "millimeter", "nanometer", "parsec", "petameter", "picometer", "terameter", "yard",
    "yoctometer", "yottameter", "zeptometer", "zettameter",
)
_UNIT_ALIASES = {"nm": "nanometer", "um": "micrometer", "µm": "micrometer", "μm": "micrometer",
                 "mm": "millimeter", "pm": "picometer", "m": "meter", "a": "angstrom",
                 "å": "angstrom", "micron": "micrometer", "microns": "micrometer",
                 "\\u00b5m": "micrometer", "cm": "centimeter", "in": "inch"}


def parse_tuple(value: Any, name: str, ndim: int, *, kind: type = int,
                positive: bool = True) -> tuple:
    """Turn ``"z,y,x"``, a number or a sequence into a tuple of ``ndim`` numbers.

    >>> parse_tuple("4,8,8", "chunks", 3)
    (4, 8, 8)
    >>> parse_tuple(16, "chunks", 3)
    (16, 16, 16)
    """
    raw = value
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace("x", ",").split(",") if p.strip()]
        try:
            value = [float(p) for p in parts]
        except ValueError:
            raise InvalidArgumentError(
                f"{name} must be {ndim} comma-separated numbers written z,y,x, got {raw!r}") from None
        if len(value) == 1:
            value = value * ndim
    elif isinstance(value, (int, float, np.integer, np.floating)):
        value = [value] * ndim
    if not isinstance(value, Sequence) and not isinstance(value, np.ndarray):
        raise InvalidArgumentError(f"{name} must be a number or a z,y,x tuple, got {raw!r}")
    value = list(value)
    if len(value) != ndim:
        raise InvalidArgumentError(
            f"{name} must have {ndim} values (z,y,x), got {len(value)}: {raw!r}")
    out: list[int | float] = []
    for v in value:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"{name} must be numbers, got {raw!r}") from None
        if not math.isfinite(f):
            raise InvalidArgumentError(f"{name} must be finite, got {raw!r}")
        if positive and f <= 0:
            raise InvalidArgumentError(f"{name} must be positive, got {raw!r}")
        if kind is int:
            if f != int(f):
                raise InvalidArgumentError(f"{name} must be whole numbers, got {raw!r}")
            out.append(int(f))
        else:
            out.append(float(f))
    return tuple(out)


def parse_unit(unit: str) -> str:
    """Return the OME-NGFF name of a spatial unit (``"nm"`` -> ``"nanometer"``)."""
    u = str(unit).strip()
    u = _UNIT_ALIASES.get(u.lower(), u.lower())
    if u not in SPACE_UNITS:
        raise InvalidArgumentError(
            f"unit must be a spatial unit such as nanometer or micrometer, got {unit!r}")
    return u


#: Micrometres in one of each OME-NGFF spatial unit (exact SI prefixes; the international
#: inch, foot, yard and mile; the IAU parsec).
_MICROMETRES = {
    "yoctometer": 1e-18, "zeptometer": 1e-15, "attometer": 1e-12, "femtometer": 1e-9,
    "picometer": 1e-6, "angstrom": 1e-4, "nanometer": 1e-3, "micrometer": 1.0,
    "millimeter": 1e3, "centimeter": 1e4, "decimeter": 1e5, "meter": 1e6, "hectometer": 1e8,
    "kilometer": 1e9, "megameter": 1e12, "gigameter": 1e15, "terameter": 1e18,
    "petameter": 1e21, "exameter": 1e24, "zettameter": 1e27, "yottameter": 1e30,
    "inch": 25_400.0, "foot": 304_800.0, "yard": 914_400.0, "mile": 1_609_344_000.0,
    "parsec": 3.0856775814913673e22,
}


def micrometres(unit: str) -> float:
    """Micrometres in one ``unit`` (any OME-NGFF spatial unit or alias; others are refused).

    >>> micrometres("nanometer"), micrometres("inch")
    (0.001, 25400.0)
    """
    return _MICROMETRES[parse_unit(unit)]


def written(value: Any) -> Fraction:
    """A number as the decimal it is written as: ``4.6`` is 23/5, not the double nearest it.

    >>> written(4.6), written(0.001), written(10)
    (Fraction(23, 5), Fraction(1, 1000), Fraction(10, 1))
    """
    if isinstance(value, (int, np.integer, Fraction)):
        return Fraction(int(value)) if isinstance(value, np.integer) else Fraction(value)
    return Fraction(repr(float(value)))


def rounded_once(terms: Sequence[tuple[Any, Any]], per: Any = 1, factor: Any = 1) -> Any:
    """``(sum of count * rate) * factor / per`` as float64, each ``rate`` and ``factor`` taken as
    written (:func:`written`) and the whole rounded once (exact while every count times a whole
    rate stays below 2**53): the double nearest the true value, so a table shows 0.087945 where
    87945 voxels * (1000 * 0.001**3) gave 0.08794500000000001. ``count`` and ``per`` are whole
    numbers or arrays of them.

    >>> float(rounded_once([(87945, 1000)], factor=written(0.001) ** 3))
    0.087945
    >>> float(rounded_once([(7, 10), (3, 0.1)], per=3, factor=written(0.001)))  # (70+0.3)/3 nm
    0.023433333333333334
    """
    rates = [written(r) * Fraction(factor) for _, r in terms]
    whole = math.lcm(*(r.denominator for r in rates))
    total: Any = 0
    for (count, _), r in zip(terms, rates):
        if r:
            total = total + np.multiply(count, float(r * whole))
    return np.divide(total, np.multiply(per, float(whole)))


def finite_number(value: Any, name: str) -> float:
    """Return ``value`` as a finite float or raise naming it (``"threshold must be finite, got nan"``)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(f):
        shown = value.strip() if isinstance(value, str) else repr(value)
        raise InvalidArgumentError(f"{name} must be finite, got {shown}")
    return f


def real_number(value: Any, name: str) -> int | float:
    """``value`` as an exact number: an ``int`` when it is a whole number (any size: 2**64 - 2
    stays itself), else a finite ``float``; raises naming it otherwise.

    >>> real_number("18446744073709551615", "value"), real_number("0.5", "value")
    (18446744073709551615, 0.5)
    >>> real_number(np.uint64(2**64 - 1), "value"), real_number("1e3", "value")
    (18446744073709551615, 1000)
    """
    if isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        from fractions import Fraction
        text = value.strip().replace("_", "")
        try:
            exact = Fraction(text)
        except (ValueError, ZeroDivisionError):
            exact = None
        if exact is not None:
            return int(exact) if exact.denominator == 1 else float(exact)
    f = finite_number(value, name)
    return int(f) if f == int(f) and abs(f) < 2**53 else f


def whole_number(value: Any, name: str, minimum: int | None = 0,
                 maximum: int | None = None) -> int:
    """Return ``value`` (``3``, ``3.0``, ``"3"``, ``"1e3"``) as an exact int within
    ``[minimum, maximum]`` (None: unbounded) or raise naming it (``"levels must be a whole
    number >= 1, got 2.5"``). Text is read exactly, at any size: never through a float.

    >>> whole_number("9007199254740993", "id"), whole_number(np.uint64(2**64 - 1), "id")
    (9007199254740993, 18446744073709551615)
    """
    n = _exact_int(value)
    if n is None or (minimum is not None and n < minimum) or (maximum is not None
                                                              and n > maximum):
        bounds = " and ".join(b for b in (f">= {minimum}" if minimum is not None else "",
                                          f"<= {maximum}" if maximum is not None else "") if b)
        raise InvalidArgumentError(f"{name} must be a whole number{' ' + bounds if bounds else ''}"
                                   f", got {value!r}")
    return n


def _exact_int(value: Any) -> int | None:
    """``value`` as an exact int, or None when it is not a whole number."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        from fractions import Fraction
        try:
            exact = Fraction(value.strip().replace("_", ""))
        except (ValueError, ZeroDivisionError):
            return None
        return int(exact) if exact.denominator == 1 else None
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return int(f) if math.isfinite(f) and f.is_integer() else None


def id_dtype(dtype: Any) -> np.dtype:
    """The one dtype that holds every id of an integer label dtype exactly: int64 for signed
    labels, uint64 for unsigned (and bool) ones. Never a float: NumPy mixes int64 with uint64
    as float64, which rounds ids above 2**53 (in ``np.concatenate``, ``np.searchsorted``,
    ``np.union1d``...), so every id array of one job is held in this one dtype.

    >>> id_dtype("int8"), id_dtype("uint16")
    (dtype('int64'), dtype('uint64'))
    """
    return np.dtype(np.int64 if np.dtype(dtype).kind == "i" else np.uint64)


def numeric_dtype(dtype: Any, what: str) -> np.dtype:
    """Check that ``dtype`` is a real integer or floating dtype (not bool, complex, text...)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise InvalidArgumentError(f"{what} has an unknown dtype {dtype!r}") from None
    if dt.kind not in "uif":
        raise InvalidArgumentError(
            f"{what} must have a real numeric dtype (integer or float), got {dt}")
    return dt

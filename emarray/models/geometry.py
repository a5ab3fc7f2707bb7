"""The architecture of the zoo's 3D U-Net as plain numbers: no torch needed.

:class:`UNetConfig` says what the network is; from it follow, per axis, the sizes a patch may
have, the output size of each, the context a valid-convolution net eats at each side and the
receptive field. ``emarray model info`` prints these, ``predict`` refuses a patch the net
cannot take before any work, and ``train`` will crop labels to the output size.

Every level has two 3x3x3 convolutions; levels are joined by max-pooling and transposed
convolutions of the level's factor (2, or 1 along z for anisotropic levels).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .._normalize import whole_number
from ..errors import InvalidArgumentError

PADDINGS = ("same", "valid")
NORMS = ("batch", "instance", "group", "none")
ACTIVATIONS = ("sigmoid", "softmax", "none")
KERNEL = 3
CONVS_PER_LEVEL = 2


@dataclass(frozen=True)
class UNetConfig:
    """A 3D U-Net.

    Attributes
    ----------
    depth : int
        Resolution levels (2: one pooling).
    filters : int
        Feature maps at the first level; doubled at each level down.
    padding : {"same", "valid"}
        ``same``: output as large as the input; ``valid``: no padding, the output is the input
        less the context on each side (tiles without blending).
    pool : list of (z, y, x)
        The pooling factor between each level and the next (``depth - 1`` of them).
    in_channels, out_channels : int
    norm : {"batch", "instance", "group", "none"}
    residual : bool
        Residual blocks (a 1x1x1 projection of the block's input added to its output).
    dropout : float
        Channel dropout before each block of the lower levels and the decoder; what
        ``predict --mc-samples`` samples.
    activation : {"sigmoid", "softmax", "none"}
        Applied to the output (probabilities for ``sigmoid``/``softmax``).
    """

    depth: int = 3
    filters: int = 16
    padding: str = "same"
    pool: tuple[tuple[int, int, int], ...] = ()
    in_channels: int = 1
    out_channels: int = 1
    norm: str = "batch"
    residual: bool = False
    dropout: float = 0.0
    activation: str = "sigmoid"

    def __post_init__(self) -> None:
        depth = whole_number(self.depth, "depth", 1)
        if depth > 8:
            raise InvalidArgumentError(f"depth must be at most 8, got {self.depth!r}")
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "filters", whole_number(self.filters, "filters", 1))
        object.__setattr__(self, "in_channels", whole_number(self.in_channels, "in_channels", 1))
        object.__setattr__(self, "out_channels", whole_number(self.out_channels, "out_channels", 1))
        for name, value, allowed in (("padding", self.padding, PADDINGS), ("norm", self.norm, NORMS),
                                     ("activation", self.activation, ACTIVATIONS)):
            if value not in allowed:
                raise InvalidArgumentError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        pool = tuple(tuple(int(f) for f in p) for p in self.pool) if self.pool else \
            ((2, 2, 2),) * (depth - 1)
        if len(pool) != depth - 1 or any(len(p) != 3 or any(f not in (1, 2) for f in p)
                                         for p in pool):
            raise InvalidArgumentError(
                f"pool must list {depth - 1} factors z,y,x of 1 or 2 (one per level below the "
                f"first), got {self.pool!r}")
        object.__setattr__(self, "pool", pool)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise InvalidArgumentError(f"dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "residual", bool(self.residual))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidArgumentError(
                f"unknown model setting {unknown[0]!r}; the settings are {', '.join(sorted(known))}")
        kw: dict[str, Any] = {k: (tuple(map(tuple, v)) if k == "pool" else v) for k, v in d.items()}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pool"] = [list(p) for p in self.pool]
        return d

    # -- sizes -------------------------------------------------------------------------------
    @property
    def factor(self) -> tuple[int, int, int]:
        """The total downsampling per axis (a same-padded input must be a multiple of it)."""
        out = [1, 1, 1]
        for p in self.pool:
            out = [o * f for o, f in zip(out, p)]
        return (out[0], out[1], out[2])

    def output_size(self, size: Any) -> tuple[int, int, int] | None:
        """The output size for an input of ``size`` (z,y,x), or None when the net cannot take it."""
        size = tuple(int(s) for s in size)
        if len(size) != 3:
            raise InvalidArgumentError(f"a patch size needs 3 values z,y,x, got {size!r}")
        out = [_axis_output(s, [p[a] for p in self.pool], self.padding == "valid")
               for a, s in enumerate(size)]
        if any(o is None for o in out):
            return None
        return (out[0], out[1], out[2])  # type: ignore[return-value]

    def context(self) -> tuple[int, int, int]:
        """Voxels a valid net eats at each side of its input (0 for same padding)."""
        if self.padding == "same":
            return (0, 0, 0)
        out = []
        for a in range(3):
            s = self.admissible(a, 1, 4096)[0]
            o = _axis_output(s, [p[a] for p in self.pool], True)
            assert o is not None
            out.append((s - o) // 2)
        return (out[0], out[1], out[2])

    def receptive_field(self) -> tuple[int, int, int]:
        """Input voxels per axis that one output voxel can see (the deepest path's extent)."""
        out = []
        for a in range(3):
            rf, jump = 1, 1
            for p in self.pool:  # down: two convolutions, then pooling
                rf += CONVS_PER_LEVEL * (KERNEL - 1) * jump
                rf += (p[a] - 1) * jump
                jump *= p[a]
            rf += CONVS_PER_LEVEL * (KERNEL - 1) * jump  # the bottom level
            for p in reversed(self.pool):  # up: transposed convolution adds no context
                jump //= p[a]
                rf += CONVS_PER_LEVEL * (KERNEL - 1) * jump
            out.append(rf)
        return (out[0], out[1], out[2])

    def admissible(self, axis: int, lo: int, hi: int) -> list[int]:
        """Input sizes in ``[lo, hi]`` the net takes along ``axis``."""
        factors = [p[axis] for p in self.pool]
        return [s for s in range(max(1, lo), hi + 1)
                if _axis_output(s, factors, self.padding == "valid") is not None]

    def nearest_admissible(self, size: Any) -> tuple[int, int, int]:
        """The admissible input size nearest to ``size`` on each axis (ties: the larger)."""
        out = []
        for a, s in enumerate(size):
            s = int(s)
            sizes = self.admissible(a, max(1, s - 64), s + 64) or self.admissible(a, 1, s + 4096)
            out.append(min(sizes, key=lambda c: (abs(c - s), -c)))
        return (out[0], out[1], out[2])

    def check_patch(self, patch: Any) -> tuple[int, int, int]:
        """The output size of ``patch``; refuses a patch the net cannot take, naming a near one."""
        o = self.output_size(patch)
        if o is None:
            near = self.nearest_admissible(patch)
            rule = (f"multiples of {','.join(map(str, self.factor))}" if self.padding == "same"
                    else f"see 'emarray model info' for the sizes a {self.padding} net takes")
            raise InvalidArgumentError(
                f"patch {','.join(map(str, patch))} is not an input size this {self.padding}-padded "
                f"net takes ({rule}); the nearest that is: {','.join(map(str, near))}")
        return o


def _axis_output(size: int, factors: list[int], valid: bool) -> int | None:
    """The output size along one axis for input ``size`` (None if inadmissible)."""
    shrink = CONVS_PER_LEVEL * (KERNEL - 1) if valid else 0
    sizes = []
    s = size
    for f in factors:
        s -= shrink
        if s < f or s % f:
            return None
        sizes.append(s)
        s //= f
    s -= shrink
    if s < 1:
        return None
    for f, skip in zip(reversed(factors), reversed(sizes)):
        s *= f
        if (skip - s) % 2 or skip < s:  # the skip is cropped to the centre, symmetrically
            return None
        s -= shrink
        if s < 1:
            return None
    return s

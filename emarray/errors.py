"""One hierarchy for every error a user can cause; each message echoes the bad value."""
from __future__ import annotations


class EmarrayError(Exception):
    """Base class of all errors raised by emarray for bad input or bad state."""


class InvalidArgumentError(EmarrayError, ValueError):
    """An argument has a value emarray cannot use (the message names it)."""


class VolumeNotFoundError(EmarrayError, FileNotFoundError):
    """A path or URL that should hold a volume holds nothing emarray can open."""


class OutputExistsError(EmarrayError, FileExistsError):
    """The output already exists and neither overwrite nor resume was asked for."""


class ShapeMismatchError(EmarrayError, ValueError):
    """Two volumes that must line up voxel for voxel have different shapes."""


class ChunkAlignmentError(EmarrayError, ValueError):
    """A write would straddle storage chunks or shards (two writers could share one)."""


class ChunkReadError(EmarrayError, OSError):
    """A storage chunk could not be read or decoded; the message names the chunk."""


class ResumeMismatchError(EmarrayError, ValueError):
    """``resume`` was asked for, but the existing output was made by a different job."""


class BackendUnavailableError(EmarrayError, ImportError):
    """The requested compute backend (for example CUDA) is not installed or has no device."""


class OutputLockedError(EmarrayError, RuntimeError):
    """Another emarray job is writing the same output right now (the message names it)."""


class IncompleteVolumeError(EmarrayError, ValueError):
    """An input is the unfinished output of an interrupted job (its missing chunks read as 0)."""


class InputChangedError(EmarrayError, ValueError):
    """An input is not what the job was planned for (changed, or different on a worker)."""


class SchedulerUnreachableError(EmarrayError, OSError):
    """The dask scheduler at the given address could not be reached in time."""


class GpuOutOfMemoryError(EmarrayError, MemoryError):
    """A block does not fit the GPU even in the smallest pieces (the message names the block)."""


class EmarrayWarning(UserWarning):
    """A result that is probably not what the user wanted (edge-of-range best threshold...)."""


class BlockFailedError(EmarrayError, RuntimeError):
    """A block kept failing after its retries; the message names the block and the last error."""


class TrainingDivergedError(EmarrayError, FloatingPointError):
    """Training's loss became NaN or infinite (too high a learning rate, or bad data)."""


class CorruptStateError(EmarrayError, ValueError):
    """A saved progress, result or state file is damaged or not emarray's (the message names it)."""


class WorkersLostError(EmarrayError, RuntimeError):
    """Every dask worker left and none came back in time; finished blocks are kept."""


class JobFailedError(EmarrayError, RuntimeError):
    """A job failed part way; the message says what it left and how to go on."""

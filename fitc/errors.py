"""Exceptions a user can act on.

Every error fitc raises on bad input derives from :class:`FitcError`; the CLI turns those into a
one-line message and a non-zero exit code. Messages name what is wrong (layer, file, key, value)
and what to do about it.
"""

from __future__ import annotations


class FitcError(Exception):
    """Base class of all errors fitc reports to users."""


class ConfigError(FitcError):
    """A configuration key or value is invalid (unknown key, bad type, bad value)."""


class DataError(FitcError):
    """A dataset file or array is invalid (missing keys, wrong shape/dtype, NaN, bad labels)."""


class UnknownModelError(ConfigError):
    """A model name is not in the zoo."""


class ModelSourceError(ConfigError):
    """A user's model cannot be loaded: file missing or changed, import or factory failure,
    weights that do not match the network."""


class UnsupportedLayerError(FitcError):
    """A module the pipeline cannot build, export or lower; the message names module and type."""


class BudgetInfeasibleError(FitcError):
    """No state of the compression space meets the budget; the message gives the smallest reachable cost."""

    def __init__(self, message: str, smallest_reachable: float | None = None) -> None:
        super().__init__(message)
        self.smallest_reachable = smallest_reachable


class ArtifactError(FitcError):
    """A run-directory artifact is missing, corrupt or inconsistent with the run."""


class RunDirError(FitcError):
    """A run directory cannot be written now: another process is writing it, it holds another run
    (model, data or seed; ``--force`` replaces it), or it lies inside another run directory."""


class EquivalenceError(FitcError):
    """Two stages of the chain (Brevitas, qonnx, onnxruntime, hls4ml emulation) disagree."""


class PrecisionMismatchError(FitcError):
    """A lowered layer's precision differs from the plan's bit widths."""


class ToolNotFoundError(FitcError):
    """A vendor tool (Vivado, Vitis) or compiler needed for this step is not on PATH."""

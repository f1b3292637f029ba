"""Exception types. Every message names the problem and how to fix it."""

from __future__ import annotations


class SaeBilingualError(Exception):
    """Base class for errors raised on bad input to sae-bilingual."""


class ConfigError(SaeBilingualError, ValueError):
    """A recipe or config field is unknown, of the wrong type or out of range."""


class DataError(SaeBilingualError, ValueError):
    """A corpus or activation set cannot serve the study (empty, one language, NaN...)."""


class CheckpointError(SaeBilingualError, LookupError):
    """A model checkpoint or source does not exist or is not in the catalogue."""


class SAEFileError(SaeBilingualError, ValueError):
    """An SAE directory is missing, truncated, corrupt, or does not fit the model/hook."""


class ExtraMissingError(SaeBilingualError, ImportError):
    """An optional extra (comet, ray, submitit, wandb) is needed but not installed."""

    def __init__(self, feature: str, install: str):
        super().__init__(f"{feature} needs an optional dependency: run `{install}`")


class OutputError(SaeBilingualError, OSError):
    """The output directory cannot be written (permissions, disk full, path escape)."""

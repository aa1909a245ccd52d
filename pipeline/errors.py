"""Exceptions users see. Each message names the input, what was wrong, and what to do."""


class LatentmillError(Exception):
    """Base class for errors latentmill raises on purpose."""


class CheckpointError(LatentmillError, ValueError):
    """A checkpoint file is missing, truncated, malformed or of an unsupported architecture."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asks to import or call something outside the allow-list (possible code execution)."""


class WeightsNotFoundError(LatentmillError, FileNotFoundError):
    """A configured weights URI does not exist; the message names the setting to change."""


class GeneratorMismatchError(LatentmillError, ValueError):
    """A model (prior, encoder) was made for another generator than the one it is used with."""

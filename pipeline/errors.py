"""Exceptions users see. Each message names the input, what was wrong, and what to do."""

import errno


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


FILESYSTEM_FAULTS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the filesystem is read-only",
                     errno.EDQUOT: "the disk quota is exceeded", errno.EIO: "an I/O error of the device"}


def filesystem_fault(exc: BaseException) -> OSError | None:
    """The fault of the storage beneath a failure (a full disk, a filesystem turned read-only, a quota), if
    one caused it: followed through causes, contexts and Ray's wrapped task errors."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FILESYSTEM_FAULTS:
            return current
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None


def describe_fault(fault: OSError) -> str:
    """One line: what happened to which path, and that the same command resumes once it is mended."""
    where = f" writing {fault.filename}" if fault.filename else ""
    return (f"{FILESYSTEM_FAULTS[fault.errno]}{where}. Nothing already written is lost: free space (or make the "
            "filesystem writable), then rerun the same command; it resumes where it stopped")

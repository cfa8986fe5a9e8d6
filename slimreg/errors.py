"""Errors that reach users: each names the file at fault and the fix.

The CLI prints ``str(error)`` as one line and exits with status 2, so the message must stand alone.
"""

from __future__ import annotations

import errno
from pathlib import Path


class SlimregError(Exception):
    """A problem the user can fix; carries the file at fault and a suggested fix."""

    def __init__(self, message: str, path: str | Path | None = None, fix: str | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.fix:
            text += f" Fix: {self.fix}"
        return text


class InputError(SlimregError):
    """An input file or samplesheet is missing, unreadable or inconsistent."""


class ParameterError(SlimregError):
    """A setting is impossible (zero batch size, unknown engine, ...)."""


class RegistrationError(SlimregError):
    """Registration could not produce a trustworthy transform for an image."""


class DependencyNotProducedError(InputError):
    """A task's input is an output that the task it depends on did not write, because that task's image could
    not be registered: the task has nothing to do (QC or merge of that image)."""


class InsufficientMemoryError(SlimregError, MemoryError):
    """The pre-flight estimate exceeds the memory available to this process."""


class InsufficientDiskError(SlimregError, OSError):
    """The pre-flight estimate exceeds the free space where outputs go."""

    def __str__(self) -> str:  # OSError would otherwise format its own args
        return SlimregError.__str__(self)


def os_error_message(error: OSError) -> str:
    """One line for an operating-system error, with the fix its cause calls for."""
    where = f"{error.filename}: " if error.filename else ""
    reason = error.strerror or str(error)
    fixes = {errno.ENOSPC: "free space there, or choose another --outdir",
             errno.EDQUOT: "free space in your quota, or choose another --outdir",
             errno.EACCES: "check its permissions (slimreg reads the inputs and writes --outdir), or choose another "
                           "--outdir",
             errno.EPERM: "check its permissions, or choose another --outdir",
             errno.EROFS: "choose a writable --outdir",
             errno.EEXIST: "a file is in the way of a folder: remove it, or choose another --outdir",
             errno.ENOTDIR: "part of that path is a file, not a folder: choose another path",
             errno.EISDIR: "that is a folder: give a file",
             errno.ELOOP: "the path is a loop of symbolic links: point it at the real file"}
    fix = fixes.get(error.errno or -1, "check the path and try again")
    return f"{where}{reason}. Fix: {fix}."

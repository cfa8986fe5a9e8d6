"""Two rules for everything slimreg writes: an output never replaces an input, and no link is written through.

Outputs never replace inputs. A command names its inputs with :func:`protecting`; every output goes through
:func:`slimreg.atomic.atomic_output`, which asks :func:`refuse_if_input` before it writes a byte, so a command
whose output folder holds one of its inputs under an output's name (``slimreg register --outdir`` the moving
image's own folder, ``slimreg probe --out`` the image itself) stops with one message instead of replacing the
input. Commands that know their outputs' names before any work also call :func:`refuse_outputs_over_inputs`
up front, so the refusal comes before minutes of registration, not after.

No link is written through. The few files slimreg opens in place instead of writing whole and renaming (the run
lock, ``run.log``, each task's log) are opened with ``O_NOFOLLOW`` and refused when a symbolic link (or a folder
below the output folder on the way to them) stands there: a link planted in an output folder would otherwise
make slimreg append to, or empty, a file anywhere the user (or root) may write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from slimreg.errors import InputError

# identities of the inputs of the commands now running in this process: absolute path, resolved path, (dev, inode)
_protected: list[tuple[set[str], set[tuple[int, int]]]] = []

OUTDIR_FIX = "choose an --outdir that holds none of the inputs (for example a new, empty folder)."


def _identities(path: Path) -> tuple[set[str], set[tuple[int, int]]]:
    """The names and file identity by which ``path`` could be reached (the path given, and where it leads)."""
    names = {os.path.abspath(path)}
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        names.add(str(path.resolve()))
    inodes: set[tuple[int, int]] = set()
    with contextlib.suppress(OSError, ValueError):
        info = os.stat(path)
        inodes.add((info.st_dev, info.st_ino))
    return names, inodes


@contextlib.contextmanager
def protecting(inputs: Iterable[str | Path | None]) -> Iterator[None]:
    """While the block runs, no output written through slimreg.atomic may land on one of ``inputs``."""
    names: set[str] = set()
    inodes: set[tuple[int, int]] = set()
    for path in inputs:
        if path is None or str(path) == "":
            continue
        more_names, more_inodes = _identities(Path(path))
        names |= more_names
        inodes |= more_inodes
    _protected.append((names, inodes))
    try:
        yield
    finally:
        _protected.remove((names, inodes))


def is_input(path: str | Path) -> bool:
    """Whether ``path`` is (or leads to) an input of a command running in this process."""
    if not _protected:
        return False
    names, inodes = _identities(Path(path))
    return any(names & known_names or inodes & known_inodes for known_names, known_inodes in _protected)


def refuse_if_input(output: str | Path, fix: str = OUTDIR_FIX) -> None:
    """Raise before writing ``output`` if that would replace an input (see the module docstring)."""
    if is_input(output):
        raise InputError("is an input of this command: writing an output there would replace it.", output, fix)


def refuse_outputs_over_inputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path],
                               fix: str = OUTDIR_FIX) -> None:
    """Up-front form of :func:`refuse_if_input`, for outputs known before any work is done."""
    with protecting(inputs):
        for output in outputs:
            refuse_if_input(output, fix)


def _refuse_links(path: Path, root: Path | None) -> None:
    """Refuse a symbolic link at ``path`` or at any folder between ``root`` and it."""
    path = Path(os.path.abspath(path))
    chain = [path]
    if root is not None:
        root = Path(os.path.abspath(root))
        if root in path.parents:
            chain += [p for p in path.parents if root in p.parents]
    for member in chain:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.lstat(member).st_mode):
                raise InputError(f"is a symbolic link (to {os.readlink(member)}); slimreg writes its own files in "
                                 "its output folder and does not write through links.", member,
                                 "remove the link (slimreg makes this file itself), or choose another --outdir.")


def open_no_follow(path: str | Path, flags: int, root: str | Path | None = None, mode: int = 0o644) -> int:
    """``os.open`` that never follows a link: a link at ``path`` (or on the way from ``root``) is refused with a
    message, and ``O_NOFOLLOW`` closes the gap between that check and the open."""
    path = Path(path)
    _refuse_links(path, Path(root) if root is not None else None)
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:  # a link appeared after the check
            _refuse_links(path, None)
        raise


def open_append(path: str | Path, root: str | Path | None = None, binary: bool = False) -> IO:
    """A log opened for appending, created if absent, never through a link (see :func:`open_no_follow`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, root)
    return os.fdopen(fd, "ab") if binary else os.fdopen(fd, "a", encoding="utf-8")


def refuse_links(paths: Iterable[str | Path], root: str | Path) -> None:
    """Check up front that none of ``paths`` (files slimreg will open in place) is, or lies under, a link."""
    for path in paths:
        _refuse_links(Path(path), Path(root))

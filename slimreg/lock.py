"""One run per output folder: an exclusive lock held for the length of a run.

Two `slimreg run`s on one folder would delete each other's live partial files (each cleans up leftovers when it
starts) and write the same outputs. The lock is an advisory ``flock`` on ``<outdir>/.slimreg.lock``: the kernel
releases it when the holder exits, however it exits, so a crashed or killed run leaves no stale lock to clear by
hand. The holder is the whole run: its task processes inherit the lock's descriptor (``OutputFolderLock.fd``), so
the lock lasts until the last of them has exited. The file itself stays (removing it while others may open it
would let two runs hold locks on two files); it names the current holder, for the message a second run prints.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import time
from pathlib import Path
from types import TracebackType

from slimreg.errors import InputError, ParameterError
from slimreg.guard import open_no_follow

LOCK_NAME = ".slimreg.lock"


HOLDER_BYTES = 256  # the holder line is written padded to this width: the file is never truncated


class OutputFolderLock:
    """``with OutputFolderLock(outdir):`` - refuse clearly if another live run holds the folder.

    The lock file is opened without following links and without ``O_TRUNC``, and written only if it is a plain
    file with no other name: a link or hard link planted as ``.slimreg.lock`` would otherwise let a run empty or
    overwrite a file elsewhere (slimreg.guard). The holder line is written over the first ``HOLDER_BYTES``,
    padded, and blanked the same way at the end, so no call ever truncates the file.
    """

    def __init__(self, outdir: Path):
        self.path = Path(outdir) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> OutputFolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_no_follow(self.path, os.O_RDWR | os.O_CREAT, root=self.path.parent)
        try:
            _refuse_foreign(fd, self.path)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, HOLDER_BYTES, 0).decode(errors="replace").strip() or "a process that has not said"
            os.close(fd)
            raise ParameterError(f"another slimreg run is writing to this folder ({holder}).", self.path.parent,
                                 "wait for that run to finish (or stop it), or choose another --outdir.") from None
        except BaseException:
            os.close(fd)
            raise
        _write_holder(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        self._fd = fd
        return self

    @property
    def fd(self) -> int:
        """The lock's descriptor, for the run's task processes to inherit (``Popen(pass_fds=...)``).

        A ``flock`` belongs to the open file, not to a process: while any process holds a descriptor of it, the
        folder stays locked. A task that inherits it keeps the folder locked until the task itself has exited, so a
        runner killed alone (``kill -9``) cannot hand the folder to a ``--resume`` while its task still writes."""
        if self._fd is None:
            raise RuntimeError("the output-folder lock is not held")
        return self._fd

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._fd is not None:
            _write_holder(self._fd, "")
            # closed, not LOCK_UN: unlocking would release the lock for every process sharing the open file
            # (a task that inherited it); closing releases it once the last holder has closed it
            os.close(self._fd)
            self._fd = None


def _refuse_foreign(fd: int, path: Path) -> None:
    """Only a plain file with this one name is slimreg's lock; anything else is refused, never written."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        what = "is not a plain file" if not stat.S_ISREG(info.st_mode) else \
            f"has {info.st_nlink} names (hard links): it is another file, not slimreg's lock"
        raise InputError(f"{what}; slimreg will not write to it.", path,
                         "remove it (slimreg makes its lock file itself), or choose another --outdir.")


def _write_holder(fd: int, text: str) -> None:
    """Write ``text`` over the first HOLDER_BYTES, padded with spaces (a newline last); never truncate."""
    line = text.encode()[: HOLDER_BYTES - 1]
    os.pwrite(fd, line + b" " * (HOLDER_BYTES - 1 - len(line)) + b"\n", 0)

"""One run per output folder: an exclusive lock held for the length of a run.

Two `slimreg run`s on one folder would delete each other's live partial files (each cleans up leftovers when it
starts) and write the same outputs. The lock is an advisory ``flock`` on ``<outdir>/.slimreg.lock``: the kernel
releases it when the holder exits, however it exits, so a crashed or killed run leaves no stale lock to clear by
hand. The file itself stays (removing it while others may open it would let two runs hold locks on two files); it
names the current holder, for the message a second run prints.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from slimreg.errors import ParameterError

LOCK_NAME = ".slimreg.lock"


class OutputFolderLock:
    """``with OutputFolderLock(outdir):`` - refuse clearly if another live run holds the folder."""

    def __init__(self, outdir: Path):
        self.path = Path(outdir) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> OutputFolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 500, 0).decode(errors="replace").strip() or "a process that has not said"
            os.close(fd)
            raise ParameterError(f"another slimreg run is writing to this folder ({holder}).", self.path.parent,
                                 "wait for that run to finish (or stop it), or choose another --outdir.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

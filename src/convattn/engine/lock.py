"""An exclusive lock on a run folder: one process at a time trains a run.

The lock is ``fcntl.flock`` on ``<folder>/run.lock``, which holds the holder's host, pid
and start time for messages. The kernel drops a flock when its process ends, however it
ends (SIGKILL included), so on one machine there are no stale locks to clean up. On NFS
the Linux client turns flock into the protocol's byte-range locks (NFSv4, or NFSv3 with
lockd), which the server keeps across hosts and frees when a dead client's lease runs
out (about 90 s); a mount with ``local_lock=flock``, ``local_lock=all`` or ``nolock``
keeps locks per host, and then only one machine may write into a folder. Where the file
system refuses flock at all (or the platform has no ``fcntl``), a warning says so and the
run goes on unlocked.

The lock is re-entrant within one thread of one process: the sweep runner holds a run's
lock while :func:`~convattn.engine.fit.fit` takes it again for the run it trains.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # not a POSIX system: runs are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "FolderLock", "RunLocked"]

#: The lock file's name inside a run folder.
LOCK_FILE = "run.lock"

log = logging.getLogger("convattn")

#: (lock file, pid, thread) -> [file descriptor, depth] of the locks this process holds.
_HELD: dict[tuple[str, int, int], list[int]] = {}
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunLocked(ValueError):
    """The run folder is locked by another process (a ``ValueError``, so the command line
    reports it on one line)."""


class FolderLock:
    """``with FolderLock(folder):`` holds ``folder``'s lock or raises :class:`RunLocked`;
    :meth:`acquire` and :meth:`release` do the same without raising."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._key = (os.path.realpath(self.path), os.getpid(), threading.get_ident())

    def acquire(self) -> bool:
        """Take the lock without waiting; ``False`` if another process holds it."""
        held = _HELD.get(self._key)
        if held is not None:
            held[1] += 1
            return True
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is None:
                raise OSError(errno.ENOSYS, "no fcntl on this platform")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                return False
            if err.errno not in _UNSUPPORTED:
                os.close(fd)
                raise
            log.warning("%s: the file system cannot lock files (%s); unlocked", self.path, err)
        _write_holder(fd)
        _HELD[self._key] = [fd, 1]
        return True

    def release(self) -> None:
        """Release one level of the lock (the file stays, emptied, for the next holder)."""
        held = _HELD.get(self._key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _HELD[self._key]
            os.ftruncate(held[0], 0)
            os.close(held[0])  # closing drops the flock

    def holder(self) -> str:
        """Who holds the lock, as recorded in the lock file ("unknown" if unreadable)."""
        try:
            info = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return "unknown"
        return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"

    def __enter__(self) -> FolderLock:
        if not self.acquire():
            raise RunLocked(f"run folder {self.folder} is in use ({self.holder()})")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _write_holder(fd: int) -> None:
    info = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)

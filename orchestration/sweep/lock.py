"""One driver per sweep: an exclusive lock on ``<sweep folder>/driver.lock`` for the driver's life.

The lock is a POSIX record lock (``fcntl.lockf``) on an open file: the kernel releases it when the
process ends, however it ends (a SIGKILLed or crashed driver leaves nothing to clean up), and NFS
implements it across machines (NFSv3 through lockd, NFSv4 natively), which is what a Slurm cluster's
shared working folder needs. ``flock`` is not used: on some network file systems it is local to one
machine. The file holds the holder's host, pid and start time, so a second driver is refused naming it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from aullm_core.atomic import process_alive
from aullm_core.errors import ConfigError

__all__ = ["SweepLock"]


class SweepLock:
    """``with SweepLock(folder):`` holds the sweep's driver lock, or raises ConfigError naming the holder."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / "driver.lock"
        self._fd: int | None = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _holder(fd)
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):  # another process holds it
                raise ConfigError(
                    f"{self.path.parent}: this sweep is being run by {holder} (lock {self.path}); wait for it to "
                    "end or stop it (SIGTERM) before resuming"
                ) from None
            raise ConfigError(f"{self.path}: cannot lock ({err.strerror}); the working folder's file system "
                              "must support POSIX locks (fcntl) for one driver per sweep") from None
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        data = json.dumps(info).encode()
        os.pwrite(fd, data, 0)  # written before the old tail is cut, so a reader never finds the file empty
        os.ftruncate(fd, len(data))
        os.fsync(fd)
        self._fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the file stays (a later driver reuses it)
            self._fd = None


def _holder(fd: int, *, patience_s: float = 2.0) -> str:
    """Who holds the lock, from what it wrote in the file. The holder writes just after it takes the lock, so
    for a moment the file is empty or still names an earlier driver (one that was killed, say): read again
    until it names another live process on this host (or any process on another host, which cannot be checked)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            named = f"pid {info['pid']} on {info['host']} since {info['since']}"
            pid = int(info["pid"])
            if info["host"] != socket.gethostname() or (pid != os.getpid() and process_alive(pid)):
                return named
        except (OSError, ValueError, KeyError, TypeError):
            named = "another driver"
        if time.monotonic() >= deadline:
            return named
        time.sleep(0.05)


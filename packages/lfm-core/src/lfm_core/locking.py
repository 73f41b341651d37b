"""A run directory's lock: ``fcntl.flock`` on a lock file. Taking it is atomic and the operating
system releases it when its process dies (even by SIGKILL), so a lock left by a killed run is
simply free: no stale-lock detection, no check-then-delete race."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from lfm_core.errors import LFMError


class RunLockedError(LFMError):
    """Another live process holds the run directory."""


class RunLock:
    """``with RunLock(run_dir / ".lock"):`` holds the directory for this process, or raises
    :class:`RunLockedError` at once. The file holds the holder's pid (for the message) and is
    removed on exit; whoever locked a file that was removed meanwhile tries again on the new one."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        while True:
            fd = self._try_lock()
            try:  # still the file at the path (not one its holder removed before we locked it)?
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def _try_lock(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunLockedError(
                f"run directory {self.path.parent} is in use by process {holder}; wait for it to finish "
                "(its lock is released when that process ends)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: see __enter__
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

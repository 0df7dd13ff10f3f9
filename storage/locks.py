"""An exclusive, advisory lock on a data-root resource, held for the life of a ``with`` block.

``flock`` on a lock file: the kernel releases it when the holder exits or is killed, so a
crash never leaves a stale lock. The file says who holds it (pid, host, since when), so a
second process is told whom it waits for instead of "resource busy".
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from storage.errors import InputError


class ResourceBusy(InputError):
    """Another process holds the lock."""


@contextmanager
def exclusive(lock_file: Path, what: str) -> Iterator[None]:
    """Hold ``lock_file`` or raise :class:`ResourceBusy` at once, naming the holder."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ResourceBusy(f"{what} is in use by {holder} (lock {lock_file}); wait for it to finish or stop it") from None
        handle.seek(0)
        handle.truncate()
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)

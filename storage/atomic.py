"""Crash-safe file replacement.

Every file the pipeline writes goes through :func:`atomic_write`: the bytes land in a
temporary file in the *same* folder (so the final rename never crosses a file
system), are fsynced, and only then renamed over the target. A crash at any moment
leaves either the old file or the new one, never a half-written mix. Standard
library only, so that both ``webvse_model`` (torch) and the Parquet layer can use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself; without this a power cut can undo it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``path`` only if the block succeeds.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    with atomic_write_path(path) as tmp, open(tmp, "wb") as handle:
        yield handle


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_write(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with UTF-8 ``text`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_write_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Like :func:`atomic_write`, for writers that insist on a file *name* (gensim, ...).

    Yields a temporary path in the target's folder; it replaces ``path`` only if the
    block succeeds, after an fsync.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def sweep_partial_writes(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Delete the temporary files (``.<name>.*.tmp``) of atomic writes cut short by a kill.

    They were never committed, so nothing refers to them. Call only while no other process
    writes there (the caller holds the folder: one trainer per run, the crawl's lock, ...).
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    partial = sorted(root.rglob(".*.tmp") if recursive else root.glob(".*.tmp"))
    for path in partial:
        path.unlink(missing_ok=True)
    return partial

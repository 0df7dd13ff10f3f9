"""Content fingerprints of the files a pipeline step reads.

A step's cache key includes the fingerprint of its input files, so a hand-edited
``keywords.parquet`` or a new crawl re-runs exactly the steps that read them, while
a step whose inputs are byte-for-byte the same is served from cache. Folders are
walked in sorted order; temporary files (``*.tmp``, dot files) are skipped because
they are not committed data.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from storage.checkpoints import sha256_file


def _committed_files(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and not name.endswith(".tmp"):
                yield Path(dirpath) / name


def fingerprint(paths: Iterable[str | os.PathLike[str]]) -> str:
    """sha256 over (name, content hash) of every file under ``paths``; missing paths count as such."""
    digest = hashlib.sha256()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for file in _committed_files(path):
                digest.update(f"{file.relative_to(path)}\0{sha256_file(file)}\n".encode())
        elif path.is_file():
            digest.update(f"{path.name}\0{sha256_file(path)}\n".encode())
        else:
            digest.update(f"missing\0{path.name}\n".encode())
        digest.update(b"\1")
    return digest.hexdigest()

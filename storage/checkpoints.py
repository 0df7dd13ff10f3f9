"""Checkpoint files that survive crashes and announce their own corruption.

The serialisation itself (``torch.save`` / ``torch.load(weights_only=True)``) belongs
to ``webvse_model``; this module owns the *file* side, with the standard library only
(``storage`` never imports torch): every checkpoint is written atomically, and a
manifest (``checkpoints.json``) records each one's sha256, written after the file. The
manifest is the commit point: a checkpoint counts only once the manifest names it, and
a file whose bytes no longer match its recorded hash is refused with a clear error
instead of reaching the unpickler.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from storage.atomic import atomic_write_bytes, atomic_write_text, sweep_partial_writes
from storage.errors import WebvseError

T = TypeVar("T")
MANIFEST_NAME = "checkpoints.json"


class CheckpointError(WebvseError, RuntimeError):
    """A checkpoint is missing, corrupt or unreadable; the message names the file."""


@dataclass(frozen=True)
class CheckpointRecord:
    """What the manifest knows of one checkpoint."""

    name: str
    path: Path
    sha256: str
    size: int
    meta: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed so that large files never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class CheckpointStore:
    """Named checkpoints (``last``, ``best``, ...) in one folder plus their manifest."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST_NAME

    def _read_manifest(self) -> dict[str, dict[str, Any]]:
        if not self.manifest_path.exists():
            return {}
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"checkpoint manifest {self.manifest_path} is unreadable: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), dict):
            raise CheckpointError(f"checkpoint manifest {self.manifest_path} has no 'checkpoints' table")
        return data["checkpoints"]

    def records(self) -> dict[str, CheckpointRecord]:
        """Every committed checkpoint, by name."""
        return {
            name: CheckpointRecord(
                name=name,
                path=self.folder / entry["file"],
                sha256=entry["sha256"],
                size=int(entry["size"]),
                meta=dict(entry.get("meta", {})),
            )
            for name, entry in self._read_manifest().items()
        }

    def sweep_orphans(self) -> list[Path]:
        """Delete temporary files left by a writer that was killed mid-write.

        Call only while no other process writes to this folder (one trainer per run).
        """
        return sweep_partial_writes(self.folder)

    def has(self, name: str) -> bool:
        return name in self._read_manifest()

    def save(self, name: str, write: Callable[[BinaryIO], None], meta: dict[str, Any] | None = None) -> CheckpointRecord:
        """Serialise with ``write`` into ``<name>.pt`` and commit it to the manifest."""
        buffer = io.BytesIO()
        write(buffer)
        payload = buffer.getvalue()
        file_name = f"{name}.pt"
        atomic_write_bytes(self.folder / file_name, payload)
        entries = self._read_manifest()
        entries[name] = {
            "file": file_name,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size": len(payload),
            "meta": meta or {},
        }
        atomic_write_text(self.manifest_path, json.dumps({"checkpoints": entries}, indent=2, sort_keys=True))
        return self.records()[name]

    def load(self, name: str, read: Callable[[BinaryIO], T]) -> T:
        """Verify ``name`` against the manifest, then deserialise it with ``read``."""
        records = self.records()
        if name not in records:
            known = ", ".join(sorted(records)) or "none"
            raise CheckpointError(f"no checkpoint '{name}' in {self.folder} (committed: {known})")
        return load_verified(records[name], read)


def load_verified(record: CheckpointRecord, read: Callable[[BinaryIO], T]) -> T:
    """Check size and sha256 of ``record``'s file, then call ``read`` on it."""
    if not record.path.exists():
        raise CheckpointError(f"checkpoint file {record.path} is missing")
    size = record.path.stat().st_size
    if size != record.size or sha256_file(record.path) != record.sha256:
        raise CheckpointError(
            f"checkpoint file {record.path} is corrupt: its bytes do not match the sha256 "
            f"recorded in {record.path.parent / MANIFEST_NAME} ({size} bytes, expected {record.size})"
        )
    try:
        with open(record.path, "rb") as handle:
            return read(handle)
    except CheckpointError:
        raise
    except Exception as exc:  # the deserialiser's own failure, reported with the file
        raise CheckpointError(f"checkpoint file {record.path} could not be loaded: {exc}") from exc

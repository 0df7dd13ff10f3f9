"""Reader (and writer) for VSE++ ``*_precomp`` folders.

VSE++ format: ``{split}_ims.npy`` (float features) and ``{split}_caps.txt`` (one caption
a line, ``k`` consecutive lines per image). The image rows are either one per image
(``len(caps) == k * len(ims)``) or one per caption, each image repeated ``k`` times
(``len(caps) == len(ims)``), as in the original releases; both are read to one row
per image.

webvse extensions, optional: ``{split}_tags.npy`` (one tag vector per image: the mean
word vector of its tags) and, for Stage II, ``web_ims.npy`` + ``web_tags.npy`` +
``web_keyword_rank.npy``. Arrays are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.atomic import atomic_write, atomic_write_text
from storage.errors import InputError, MissingInputError


@dataclass
class PrecompSplit:
    """One split, one feature row per image, ``captions_per_image`` captions each."""

    split: str
    features: np.ndarray
    captions: list[str]
    captions_per_image: int
    tag_vectors: np.ndarray | None = None


@dataclass
class PrecompWeb:
    features: np.ndarray
    tag_vectors: np.ndarray
    keyword_rank: np.ndarray


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path} is not a readable .npy array: {exc}") from exc


def read_precomp_split(folder: str | Path, split: str, captions_per_image: int = 5) -> PrecompSplit:
    """Read ``{split}_ims.npy`` + ``{split}_caps.txt`` (+ ``{split}_tags.npy``)."""
    root = Path(folder)
    if not root.is_dir():
        raise MissingInputError(f"precomp folder {root} does not exist")
    ims_path, caps_path, tags_path = root / f"{split}_ims.npy", root / f"{split}_caps.txt", root / f"{split}_tags.npy"
    for required in (ims_path, caps_path):
        if not required.is_file():
            raise MissingInputError(f"precomp split '{split}' needs {required}, which does not exist")
    features = _load_array(ims_path)
    if features.ndim != 2:
        raise InputError(f"{ims_path} must be a [rows, dim] matrix, got shape {features.shape}")
    captions = caps_path.read_text(encoding="utf-8").splitlines()
    k = captions_per_image
    if len(captions) == k * len(features):
        pass
    elif len(captions) == len(features) and len(features) % k == 0:
        features = features[::k]
    else:
        raise InputError(
            f"{caps_path} has {len(captions)} captions for {len(features)} rows in {ims_path}: "
            f"expected {k} captions per row or one row per caption ({k} per image)"
        )
    tags = None
    if tags_path.is_file():
        tags = _load_array(tags_path)
        if tags.ndim != 2 or len(tags) != len(features):
            raise InputError(f"{tags_path} must hold one tag vector per image ({len(features)}), got shape {tags.shape}")
    return PrecompSplit(split, np.asarray(features, dtype=np.float32), captions, k, tags)


PRECOMP_WEB_FILES = ("web_ims.npy", "web_tags.npy", "web_keyword_rank.npy")


def read_precomp_web(folder: str | Path) -> PrecompWeb | None:
    """The Stage II web pairs of a precomp folder, or None if it has none."""
    root = Path(folder)
    names = PRECOMP_WEB_FILES
    present = [(root / n).is_file() for n in names]
    if not any(present):
        return None
    if not all(present):
        missing = [n for n, p in zip(names, present) if not p]
        raise MissingInputError(f"{root} has web pairs but lacks {missing}")
    return PrecompWeb(*(_load_array(root / n) for n in names))


def write_precomp_split(folder: str | Path, split: PrecompSplit) -> None:
    """Write a split in the same format (one row per image), atomically per file."""
    root = Path(folder)
    with atomic_write(root / f"{split.split}_ims.npy") as handle:
        np.save(handle, split.features, allow_pickle=False)
    atomic_write_text(root / f"{split.split}_caps.txt", "\n".join(split.captions) + "\n")
    if split.tag_vectors is not None:
        with atomic_write(root / f"{split.split}_tags.npy") as handle:
            np.save(handle, split.tag_vectors, allow_pickle=False)


def write_precomp_web(folder: str | Path, web: PrecompWeb) -> None:
    root = Path(folder)
    for name, array in (("web_ims", web.features), ("web_tags", web.tag_vectors), ("web_keyword_rank", web.keyword_rank)):
        with atomic_write(root / f"{name}.npy") as handle:
            np.save(handle, array, allow_pickle=False)

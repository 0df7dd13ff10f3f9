"""Which images an index holds, and what a person is shown beside each.

A *collection* is one of: the run's ``test`` split, every ``clean`` image, the crawled
``web`` photos (kept ones), or a ``folder`` of the user's own photos. Each item is named by
its content (sha256), carries its absolute file path (only the server reads it: requests
name items by sha256, never by path), and its *labels*: the captions of a clean image, the
English tags of a web photo, nothing for a user's photo.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pandas as pd

from storage.checkpoints import sha256_file
from storage.errors import InputError, MissingInputError
from storage.layout import DataRoot
from storage.tables import CLEAN_CAPTIONS, CLEAN_IMAGES, WEB_PHOTOS, read_table

COLLECTIONS = ("test", "clean", "web", "folder")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
ITEM_COLUMNS = ["sha256", "path", "split", "source", "labels"]


def collection_name(collection: str, folder: str | None = None) -> str:
    """The index folder's name: the collection, or ``folder-<name>-<hash of its path>``."""
    if collection not in COLLECTIONS:
        raise InputError(f"index.collection must be one of {COLLECTIONS}, got {collection!r}")
    if collection != "folder":
        return collection
    if not folder:
        raise InputError("index.collection 'folder' needs index.folder: the folder of photos to index")
    where = Path(folder).resolve()
    slug = re.sub(r"[^a-z0-9]+", "-", where.name.lower()).strip("-")[:40] or "photos"
    return f"folder-{slug}-{hashlib.sha256(str(where).encode()).hexdigest()[:8]}"


def folder_images(folder: str | Path) -> pd.DataFrame:
    """``sha256, path`` of the image files under ``folder`` (recursively, by suffix), each content once."""
    where = Path(folder).resolve()
    if not where.is_dir():
        raise MissingInputError(f"index.folder {where} is not a folder")
    files = sorted(p for p in where.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MissingInputError(f"{where} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    frame = pd.DataFrame({"sha256": [sha256_file(p) for p in files], "path": [str(p) for p in files]})
    return frame.drop_duplicates("sha256").reset_index(drop=True)


def _clean_items(root: DataRoot, split: str | None) -> pd.DataFrame:
    images = read_table(root.clean_images, CLEAN_IMAGES)
    if split is not None:
        images = images[images["split"] == split]
    if images.empty:
        raise MissingInputError(f"{root.clean_images} has no images" + (f" in split {split!r}" if split else ""))
    captions = read_table(root.clean_captions, CLEAN_CAPTIONS)
    texts = captions.sort_values("caption_id", kind="stable").groupby("image_id")["text"].agg(list)
    return pd.DataFrame({
        "sha256": images["sha256"], "path": [str(Path(p).resolve()) for p in images["path"]], "split": images["split"],
        "source": "clean", "labels": [texts.get(i, []) for i in images["image_id"]],
    })  # fmt: skip


def _web_items(root: DataRoot) -> pd.DataFrame:
    if not root.web_photos.is_file():
        raise MissingInputError(f"no crawled photos under {root.root} ({root.web_photos} is missing): run the crawl step")
    photos = read_table(root.web_photos, WEB_PHOTOS)
    photos = photos[(photos["status"] == "kept") & (photos["sha256"] != "")]
    return pd.DataFrame({
        "sha256": photos["sha256"], "path": [str((root.root / p).resolve()) for p in photos["path"]], "split": "",
        "source": "web", "labels": [list(t) for t in photos["english_tags"]],
    })  # fmt: skip


def collection_items(root: DataRoot, collection: str, test_split: str = "test", folder: str | None = None) -> pd.DataFrame:
    """The collection's images (``ITEM_COLUMNS``), each content once, in a stable order."""
    collection_name(collection, folder)  # validates
    if collection == "folder":
        found = folder_images(folder or "")
        items = found.assign(split="", source="folder", labels=[[] for _ in range(len(found))])
    elif collection == "web":
        items = _web_items(root)
    else:
        items = _clean_items(root, test_split if collection == "test" else None)
    return items[ITEM_COLUMNS].drop_duplicates("sha256").reset_index(drop=True)

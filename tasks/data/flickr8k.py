"""Flickr8k caption files -> a Karpathy split file.

Two formats:

* ``image,split,caption_idx,caption`` (``../shared/data/flickr8k/captions.csv``): the
  **standard split** is kept as given (train 6,000 / val 1,000 / test 1,000, the split of
  Karpathy's ``dataset_flickr8k.json``); ``extra`` marks images in no official list, which
  are left out of the split file and counted.
* Kaggle's ``image,caption`` (``captions.txt``) has no split: images are ordered by the sha1
  of their file name and the first 80% go to train, the next 10% to val, the last 10% to
  test (800/100/100 for the 1,000-image subset). Hashing the name keeps the split stable
  whatever order the file lists images in. The caller is told which split was used.

Bad input never changes a split silently: an unknown split value, an image listed under two
splits, a line that is not UTF-8 or an image without exactly ``captions_per_image`` captions
is an error naming the line or image; a listed image whose file is missing is skipped and
counted (the 1,000-image subset lists captions for all 8,091 images).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from storage.atomic import atomic_write_text
from storage.errors import InputError, MissingInputError
from storage.textfile import read_utf8
from webvse_model.text import tokenize

OFFICIAL_SPLITS = ("train", "val", "test")
UNOFFICIAL_SPLIT = "extra"  # in no official list: left out of the split file
HASH_SPLIT = "fixed 80/10/10 hash split (the file has no split column)"


@dataclass
class Flickr8kCaptions:
    """The captions of a Flickr8k file, and the split each image has there (empty: no split column)."""

    captions: dict[str, list[str]] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)


def read_flickr8k(csv_path: str | Path) -> Flickr8kCaptions:
    """Captions per image in file order, and the ``split`` column's value per image where there is one."""
    source = Path(csv_path)
    if not source.is_file():
        raise MissingInputError(f"Flickr8k caption file {source} does not exist")
    reader = csv.DictReader(io.StringIO(read_utf8(source), newline=""))
    fields = set(reader.fieldnames or ())
    if not {"image", "caption"} <= fields:
        raise InputError(f"{source} must have an 'image,caption' or 'image,split,caption_idx,caption' header (Flickr8k)")
    out = Flickr8kCaptions(captions=defaultdict(list))
    for line, row in enumerate(reader, start=2):
        image, caption = (row["image"] or "").strip(), (row["caption"] or "").strip()
        if not image:
            raise InputError(f"{source}: line {line} has no image name")
        out.captions[image].append(caption)
        if "split" in fields:
            split = (row["split"] or "").strip()
            if split not in (*OFFICIAL_SPLITS, UNOFFICIAL_SPLIT):
                raise InputError(
                    f"{source}: line {line} has split {split!r}; expected one of {(*OFFICIAL_SPLITS, UNOFFICIAL_SPLIT)}"
                )
            if out.splits.setdefault(image, split) != split:
                raise InputError(f"{source}: line {line} puts {image} in {split!r}, an earlier line in {out.splits[image]!r}")
    out.captions = dict(out.captions)
    return out


def read_flickr8k_captions(csv_path: str | Path) -> dict[str, list[str]]:
    """``{image file name: [captions]}`` in file order (either format)."""
    return read_flickr8k(csv_path).captions


def split_of(names: list[str], fractions: tuple[float, float] = (0.8, 0.1)) -> dict[str, str]:
    """Deterministic train/val/test assignment by sha1 of the file name."""
    ordered = sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    n_train, n_val = round(fractions[0] * len(ordered)), round(fractions[1] * len(ordered))
    return {name: "train" if i < n_train else "val" if i < n_train + n_val else "test" for i, name in enumerate(ordered)}


@dataclass(frozen=True)
class ImportSummary:
    """What an import wrote and left out, for the user to read."""

    counts: dict[str, int]  # images per split written
    split_source: str  # "the file's split column" or HASH_SPLIT
    missing_images: int  # listed in the file, no image file: skipped
    unofficial: int  # split "extra": left out
    first_missing: str = ""


def flickr8k_to_karpathy(
    csv_path: str | Path, image_dir: str | Path, out_json: str | Path, captions_per_image: int = 5
) -> ImportSummary:
    """Write ``dataset_flickr8k.json`` for the images of ``image_dir`` listed in the file."""
    folder = Path(image_dir)
    if not folder.is_dir():
        raise MissingInputError(f"Flickr8k image folder {folder} does not exist")
    data = read_flickr8k(csv_path)
    unofficial = {name for name, split in data.splits.items() if split == UNOFFICIAL_SPLIT}
    listed = {name: caps for name, caps in data.captions.items() if name not in unofficial}
    present = {name: caps for name, caps in listed.items() if (folder / name).is_file()}
    missing = sorted(set(listed) - set(present))
    if not present:
        raise MissingInputError(f"none of the images of {csv_path} is in {folder}")
    odd = [name for name, caps in present.items() if len(caps) != captions_per_image]
    if odd:
        raise InputError(f"{len(odd)} images do not have exactly {captions_per_image} captions (first: {odd[0]})")
    if data.splits:
        splits, split_source = {name: data.splits[name] for name in present}, "the file's split column"
    else:
        splits, split_source = split_of(list(present)), HASH_SPLIT
    images = [
        {"filename": name, "imgid": i, "split": splits[name],
         "sentences": [{"raw": c, "tokens": tokenize(c), "sentid": i * captions_per_image + j} for j, c in enumerate(caps)]}
        for i, (name, caps) in enumerate(sorted(present.items()))
    ]  # fmt: skip
    atomic_write_text(out_json, json.dumps({"dataset": "flickr8k", "images": images}))
    counts = {s: sum(im["split"] == s for im in images) for s in OFFICIAL_SPLITS}
    return ImportSummary(counts, split_source, len(missing), len(unofficial), missing[0] if missing else "")

"""Flickr8k in Kaggle's ``image,caption`` CSV format -> a Karpathy split file.

The split is fixed and documented: images are ordered by the sha1 of their file name
and the first 80% go to train, the next 10% to val, the last 10% to test (800/100/100
for the 1,000-image subset in ``../shared/data/flickr8k-1k``). Hashing the name keeps
the split stable whatever order the CSV lists images in, and independent of content.
Images without exactly ``captions_per_image`` captions are reported, not guessed at.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import defaultdict
from pathlib import Path

from storage.atomic import atomic_write_text
from storage.errors import InputError, MissingInputError
from webvse_model.text import tokenize


def read_flickr8k_captions(csv_path: str | Path) -> dict[str, list[str]]:
    """``{image file name: [captions]}`` in file order."""
    source = Path(csv_path)
    if not source.is_file():
        raise MissingInputError(f"Flickr8k caption file {source} does not exist")
    captions: dict[str, list[str]] = defaultdict(list)
    with open(source, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"image", "caption"} <= set(reader.fieldnames):
            raise InputError(f"{source} must have an 'image,caption' header (Kaggle's Flickr8k format)")
        for row in reader:
            captions[row["image"].strip()].append(row["caption"].strip())
    return dict(captions)


def split_of(names: list[str], fractions: tuple[float, float] = (0.8, 0.1)) -> dict[str, str]:
    """Deterministic train/val/test assignment by sha1 of the file name."""
    ordered = sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    n_train, n_val = round(fractions[0] * len(ordered)), round(fractions[1] * len(ordered))
    return {name: "train" if i < n_train else "val" if i < n_train + n_val else "test" for i, name in enumerate(ordered)}


def flickr8k_to_karpathy(csv_path: str | Path, image_dir: str | Path, out_json: str | Path, captions_per_image: int = 5) -> dict[str, int]:
    """Write ``dataset_flickr8k.json`` for the images of ``image_dir`` listed in the CSV."""
    folder = Path(image_dir)
    captions = read_flickr8k_captions(csv_path)
    present = {name: caps for name, caps in captions.items() if (folder / name).is_file()}
    if not present:
        raise MissingInputError(f"none of the images of {csv_path} is in {folder}")
    odd = [name for name, caps in present.items() if len(caps) != captions_per_image]
    if odd:
        raise InputError(f"{len(odd)} images do not have exactly {captions_per_image} captions (first: {odd[0]})")
    splits = split_of(list(present))
    images = [
        {"filename": name, "imgid": i, "split": splits[name],
         "sentences": [{"raw": c, "tokens": tokenize(c), "sentid": i * captions_per_image + j} for j, c in enumerate(caps)]}
        for i, (name, caps) in enumerate(sorted(present.items()))
    ]  # fmt: skip
    atomic_write_text(out_json, json.dumps({"dataset": "flickr8k", "images": images}))
    return {s: sum(im["split"] == s for im in images) for s in ("train", "val", "test")}

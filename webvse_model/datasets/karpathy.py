"""Reader for Karpathy split files (``dataset_coco.json``, ``dataset_flickr30k.json``).

Format: ``{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw", "tokens"}],
"cocoid"? | "imgid"?}], "dataset"?}``. ``restval`` (COCO's extra 30K training images)
is folded into ``train`` by default, as VSE++ does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from storage.errors import InputError, MissingInputError

SPLITS = ("train", "val", "test", "restval")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a Karpathy file and its captions."""

    image_id: str
    split: str
    path: Path
    captions: tuple[str, ...]
    tokens: tuple[tuple[str, ...], ...]


@dataclass
class KarpathyDataset:
    name: str
    images: list[ImageRecord]
    empty_captions: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def split(self, name: str) -> list[ImageRecord]:
        return [r for r in self.images if r.split == name]


def read_karpathy(json_path: str | Path, image_root: str | Path | None = None, use_restval: bool = True) -> KarpathyDataset:
    """Parse a Karpathy split file; images resolve under ``image_root`` (default: its folder)."""
    source = Path(json_path)
    if not source.is_file():
        raise MissingInputError(f"Karpathy split file {source} does not exist")
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{source} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{source} has no 'images' list: not a Karpathy split file")
    root = Path(image_root) if image_root is not None else source.parent
    records: list[ImageRecord] = []
    empty = 0
    for index, entry in enumerate(data["images"]):
        where = f"{source}: images[{index}]"
        if not isinstance(entry, dict) or "filename" not in entry or "sentences" not in entry:
            raise InputError(f"{where} needs 'filename' and 'sentences'")
        split = entry.get("split")
        if split not in SPLITS:
            raise InputError(f"{where} has split {split!r}; expected one of {SPLITS}")
        if split == "restval" and use_restval:
            split = "train"
        captions, tokens = [], []
        for sentence in entry["sentences"]:
            raw = str(sentence.get("raw", "")).strip()
            toks = tuple(str(t).lower() for t in sentence.get("tokens") or raw.lower().split())
            if not raw and not toks:
                empty += 1
            captions.append(raw)
            tokens.append(toks)
        image_id = str(entry.get("cocoid", entry.get("imgid", Path(entry["filename"]).stem)))
        path = root / entry.get("filepath", "") / entry["filename"]
        records.append(ImageRecord(image_id, split, path, tuple(captions), tuple(tokens)))
    counts = {s: sum(r.split == s for r in records) for s in SPLITS if any(r.split == s for r in records)}
    return KarpathyDataset(str(data.get("dataset", source.stem)), records, empty, counts)

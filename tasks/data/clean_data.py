"""Clean-data step: a Karpathy split file + image folder -> ``clean/images.parquet`` and
``clean/captions.parquet`` (dummy tags empty until the keywords step fills them).

Images are keyed by the sha256 of their bytes, so features computed once serve every
dataset that shares an image. A missing image file is an error naming it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from storage.checkpoints import sha256_file
from storage.errors import MissingInputError
from storage.layout import DataRoot
from storage.tables import CLEAN_CAPTIONS, CLEAN_IMAGES, write_table
from webvse_model.datasets.karpathy import read_karpathy


def ingest_karpathy(root: DataRoot, json_path: str | Path, image_root: str | Path | None = None) -> dict[str, int]:
    """Write the clean tables; returns image counts per split."""
    dataset = read_karpathy(json_path, image_root)
    missing = [r.path for r in dataset.images if not r.path.is_file()]
    if missing:
        raise MissingInputError(f"{len(missing)} images of {json_path} are missing (first: {missing[0]})")
    images = pd.DataFrame(
        {
            "image_id": [r.image_id for r in dataset.images],
            "split": [r.split for r in dataset.images],
            "path": [str(r.path) for r in dataset.images],
            "sha256": [sha256_file(r.path) for r in dataset.images],
        }
    )
    captions = pd.DataFrame(
        [
            {
                "caption_id": f"{r.image_id}#{n}",
                "image_id": r.image_id,
                "split": r.split,
                "text": text,
                "tokens": list(tokens),
                "dummy_tags": [],
            }
            for r in dataset.images
            for n, (text, tokens) in enumerate(zip(r.captions, r.tokens))
        ]
    )
    write_table(root.clean_images, images, CLEAN_IMAGES)
    write_table(root.clean_captions, captions, CLEAN_CAPTIONS)
    return dict(dataset.counts)

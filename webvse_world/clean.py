"""The generated clean dataset: rendered images + 5 captions each, as a Karpathy split file.

Object frequencies follow a Zipf law in *train* (rank = position in ``OBJECTS``), while
val and test draw objects uniformly: rare concepts are scarce in training but as
present as any other at test time, which is the gap the paper's web images fill.
Output: ``<folder>/dataset_world.json`` (Karpathy format, with each image's ground
truth under ``concepts``) and ``<folder>/images/<split>_<n>.jpg``.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.atomic import atomic_write_text
from storage.layout import WORLD_DATASET_FILE
from webvse_model.text import tokenize
from webvse_world.concepts import OBJECTS, zipf_weights
from webvse_world.scenes import captions, render, sample_scene, write_jpeg

DATASET_FILE = WORLD_DATASET_FILE


@dataclass(frozen=True)
class CleanSizes:
    train: int = 3000
    val: int = 250
    test: int = 1000
    zipf_exponent: float = 1.1


def _split_probs(split: str, sizes: CleanSizes) -> np.ndarray:
    if split == "train":
        return zipf_weights(len(OBJECTS), sizes.zipf_exponent)
    return np.full(len(OBJECTS), 1.0 / len(OBJECTS))


def _make_image(args: tuple[str, int, int, str, CleanSizes]) -> dict[str, Any]:
    """Render and caption one image; its RNG is seeded by (seed, split, index) alone."""
    split, index, seed, folder, sizes = args
    rng = np.random.default_rng([seed, ["train", "val", "test"].index(split), index])
    scene = sample_scene(rng, _split_probs(split, sizes))
    filename = f"{split}_{index:05d}.jpg"
    write_jpeg(Path(folder) / "images" / filename, render(scene, rng))
    sentences = [{"raw": c, "tokens": tokenize(c)} for c in captions(scene, rng)]
    return {"filename": filename, "filepath": "images", "split": split, "sentences": sentences, "concepts": scene.concepts()}


def generate_clean_dataset(folder: str | Path, sizes: CleanSizes = CleanSizes(), seed: int = 0, workers: int = 2) -> Path:
    """Write the dataset; returns the Karpathy JSON path. Deterministic from ``seed``."""
    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    jobs = [(split, i, seed, str(root), sizes) for split in ("train", "val", "test") for i in range(getattr(sizes, split))]
    if workers > 1 and len(jobs) > 200:
        with ProcessPoolExecutor(workers) as pool:
            images = list(pool.map(_make_image, jobs, chunksize=64))
    else:
        images = [_make_image(job) for job in jobs]
    for imgid, entry in enumerate(images):
        entry["imgid"] = imgid
        for n, sentence in enumerate(entry["sentences"]):
            sentence["sentid"] = imgid * 5 + n
    document = {"dataset": "world", "seed": seed, "sizes": asdict(sizes), "images": images}
    target = root / DATASET_FILE
    atomic_write_text(target, json.dumps(document))
    return target

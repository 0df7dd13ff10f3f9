"""An index: a trained run's joint-space vectors of a collection and of the caption bank.

Built once per (run, collection) under ``runs/<run>/index/<collection>/``:

* ``items.parquet``: each image (sha256, path, split, source, captions or tags) and its
  embedding by the run's final stage (Stage II if trained, else Stage I);
* ``captions.parquet``: every clean caption and its embedding (what an image is described
  from, with the split it comes from: a test image's own captions are among them);
* ``ivf.faiss`` when the collection is searched approximately (see :mod:`.vector_search`);
* ``manifest.json``: run, stage, counts, the model's checkpoint hash (a retrained run makes
  the index stale, and the server says so), the run's test R@1/R@10, and for an
  approximate index its recall@10 against exact search.

A folder of the user's own photos goes through the features step's own code
(:func:`tasks.imaging.features.compute_features`, same encoder and precision as the run's features),
so its rows are cached with the rest and decode failures are reported the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from storage.atomic import atomic_write_text
from storage.errors import MissingInputError
from storage.layout import (
    EVALUATION_FILE,
    INDEX_CAPTIONS_FILE,
    INDEX_DIR,
    INDEX_ITEMS_FILE,
    INDEX_IVF_FILE,
    INDEX_MANIFEST_FILE,
    VOCAB_FILE,
    DataRoot,
)
from storage.tables import (
    CLEAN_CAPTIONS,
    CLEAN_IMAGES,
    RUN_EVALUATION,
    index_captions_schema,
    index_items_schema,
    read_features,
    read_table,
    write_table,
)
from tasks.imaging.features import compute_features
from tasks.imaging.settings import FeatureSettings
from tasks.reporting.evaluation import run_source
from tasks.serving.collection import collection_items, collection_name
from tasks.serving.index_settings import IndexSettings
from tasks.serving.vector_search import VectorSearch
from tasks.training.model_registry import model_in_use
from tasks.training.runs import final_stage_store
from webvse_model.cnn import encoder_of_features
from webvse_model.data import pad_token_ids
from webvse_model.inference import embed_captions, embed_images
from webvse_model.text import Vocabulary, tokenize
from webvse_model.train import load_model, pick_device

SHOWN_METRICS = ("i2t_r1", "i2t_r10", "t2i_r1", "t2i_r10", "rsum")


def index_dir(run: str | Path, collection: str = IndexSettings.collection, folder: str | None = None) -> Path:
    return Path(run) / INDEX_DIR / collection_name(collection, folder)


def model_checkpoint(run: str | Path) -> tuple[str, str]:
    """``(stage, sha256 of its best checkpoint)``: what the index was embedded with."""
    store = final_stage_store(run)
    return store.folder.name, store.records()["best"].sha256


def test_metrics(run: str | Path, stage: str) -> dict[str, Any] | None:
    """The run's recorded test metrics of ``stage`` (from the evaluate step), or None if never evaluated."""
    path = Path(run) / EVALUATION_FILE
    if not path.is_file():
        return None
    table = read_table(path, RUN_EVALUATION)
    rows = table[table["stage"] == stage]
    if rows.empty:
        return None
    row = rows.iloc[-1]
    return {"split": str(row["split"]), "protocol": str(row["protocol"]), **{m: float(row[m]) for m in SHOWN_METRICS}}


def _features(root: DataRoot, feature_model: str, items: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The items that have a feature row (others could not be decoded), and their features."""
    folder = root.features_dir(feature_model)
    found = read_features(folder)
    kept = items[items["sha256"].isin(found.row_of)].reset_index(drop=True)
    if kept.empty:
        raise MissingInputError(f"none of the {len(items)} images to index has features in {folder}: run the features step")
    return kept, found.rows(kept["sha256"])


def _caption_bank(root: DataRoot) -> pd.DataFrame:
    """Every clean caption with its image's sha256 and split."""
    if not root.clean_captions.is_file():
        return pd.DataFrame(columns=["caption_id", "image_sha256", "split", "text"])
    captions = read_table(root.clean_captions, CLEAN_CAPTIONS)
    sha_of = read_table(root.clean_images, CLEAN_IMAGES).set_index("image_id")["sha256"]
    return pd.DataFrame({
        "caption_id": captions["caption_id"], "image_sha256": captions["image_id"].map(sha_of).fillna(""),
        "split": captions["split"], "text": captions["text"],
    }).reset_index(drop=True)  # fmt: skip


def build_index(
    run_dir: str | Path, settings: IndexSettings = IndexSettings(), device: str = "auto", log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Embed the collection and the caption bank with the run's model; write the index folder; its manifest."""
    run = Path(run_dir).absolute()
    started = time.perf_counter()
    source = run_source(run)
    root = DataRoot.resolve(source.path)
    if source.kind != "parquet":
        raise MissingInputError(
            f"{run} was trained on a precomp folder ({source.path}): it has no image files to show; index a run of a data root"
        )
    wanted = collection_items(root, settings.collection, source.test_split, settings.folder)
    if settings.collection == "folder":  # the user's photos: through the features step's own code, cached with the rest
        spec, bf16 = encoder_of_features(source.feature_model)
        compute_features(
            root, wanted[["sha256", "path"]], FeatureSettings(spec.name, device=device, precision="bf16" if bf16 else "fp32"), log
        )
    items, features = _features(root, source.feature_model, wanted)
    stage, checkpoint = model_checkpoint(run)
    dev = pick_device(device)
    model = load_model(final_stage_store(run), "best", dev)
    embeddings = embed_images(model, features, dev).numpy()
    vocab = Vocabulary.load(run / VOCAB_FILE)
    bank = _caption_bank(root)
    tokens = [vocab.encode(tokenize(text)) for text in bank["text"]]
    caption_vectors = np.zeros((0, embeddings.shape[1]), dtype=np.float32)
    if len(bank):
        padded, lengths = pad_token_ids(tokens)
        caption_vectors = embed_captions(model, padded, lengths, dev).numpy()
    search = VectorSearch.build(embeddings, settings.uses_ivf(len(embeddings)), nprobe=settings.nprobe)
    sample = caption_vectors if len(caption_vectors) else embeddings
    picks = np.linspace(0, len(sample) - 1, num=min(settings.recall_queries, len(sample))).astype(int)
    recall = search.recall_against_exact(sample[picks], 10)
    folder = index_dir(run, settings.collection, settings.folder)
    dim = embeddings.shape[1]
    write_table(folder / INDEX_ITEMS_FILE, items.assign(embedding=list(embeddings)), index_items_schema(dim))
    write_table(folder / INDEX_CAPTIONS_FILE, bank.assign(embedding=list(caption_vectors)), index_captions_schema(dim))
    if search.approximate:
        search.save_ivf(folder / INDEX_IVF_FILE)
    else:
        (folder / INDEX_IVF_FILE).unlink(missing_ok=True)
    manifest = {
        "run": run.name, "run_dir": str(run), "stage": stage, "checkpoint_sha256": checkpoint,
        "collection": collection_name(settings.collection, settings.folder), "folder": settings.folder,
        "items": len(items), "left_out": len(wanted) - len(items),
        "captions": len(bank), "dim": dim, "feature_model": source.feature_model,
        "search": "approximate (faiss IVF)" if search.approximate else "exact", "settings": asdict(settings),
        "recall_at_10_vs_exact": recall, "test_metrics": test_metrics(run, stage),
        "build_seconds": round(time.perf_counter() - started, 2), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    atomic_write_text(folder / INDEX_MANIFEST_FILE, json.dumps(manifest, indent=2))
    log(
        f"index: {len(items)} {manifest['collection']} images and {len(bank)} captions with {run.name}/{stage} "
        f"({manifest['search']}, recall@10 vs exact {recall:.3f}) in {manifest['build_seconds']:.1f}s -> {folder}"
    )
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / INDEX_MANIFEST_FILE
    if not path.is_file():
        raise MissingInputError(f"no index in {folder}: build it with 'webvse index' (or a pipeline run, whose last step it is)")
    return dict(json.loads(path.read_text(encoding="utf-8")))


# ------------------------------------------------------------------ which run
def index_run(root: DataRoot, run: str | None) -> Path:
    """The run to index: the one given, else the model in use, else the newest run."""
    if run:
        return Path(run)
    chosen = model_in_use(root) or root.latest_run()
    if chosen is None:
        raise MissingInputError(f"no trained run under {root.runs_dir} to index: train first (steps stage1, stage2)")
    return chosen


def index_is_current(folder: Path, run: Path) -> bool:
    """Whether ``folder`` holds an index built with the run's model as it is now."""
    if not (folder / INDEX_MANIFEST_FILE).is_file():
        return False
    return bool(read_manifest(folder)["checkpoint_sha256"] == model_checkpoint(run)[1])

"""Text -> images with a trained run: ``webvse search "a dog on a beach"``.

The query is tokenised with the run's own vocabulary and encoded by its final stage
(Stage II if trained, else Stage I); the images of the run's split are embedded with
the same model, ranked by cosine similarity (embeddings are L2-normalised), and the
hits are printed and written to a small HTML gallery in the run folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from storage.errors import InputError
from tasks.evaluation import image_names, run_source
from tasks.report import gallery_html
from tasks.training import VOCAB_FILE, final_stage_store
from tasks.training_data import read_split
from webvse_model.inference import embed_captions, embed_images
from webvse_model.text import SPECIAL_TOKENS, Vocabulary, tokenize
from webvse_model.train import load_model, pick_device


@dataclass(frozen=True)
class SearchResult:
    stage: str
    hits: list[tuple[str, float]]
    unknown_words: list[str]
    gallery: Path


def search_images(run_dir: str | Path, query: str, k: int = 5, split: str | None = None, device: str = "auto") -> SearchResult:
    """The ``k`` images of the run's split closest to ``query`` in the joint space."""
    if not query.strip():
        raise InputError("the search query is empty")
    if k < 1:
        raise InputError(f"-k must be >= 1, got {k}")
    run = Path(run_dir)
    source = run_source(run)
    split = split or source.test_split
    store = final_stage_store(run)  # the run's model: Stage II if trained, else Stage I
    stage = store.folder.name
    dev = pick_device(device)
    model = load_model(store, "best", dev)
    vocab = Vocabulary.load(run / VOCAB_FILE)
    words = tokenize(query)
    ids = vocab.encode(words)
    unknown = [w for w in words if w not in vocab]
    if len(unknown) == len(words):  # the model would rank images for an all-<unk> caption: arbitrary "results"
        raise InputError(
            f"none of the query's words is in the model's vocabulary ({', '.join(unknown)}); "
            f"it knows {len(vocab)} words from its training captions, most frequent: "
            + ", ".join(vocab.tokens[len(SPECIAL_TOKENS) :][:8])
        )
    features = read_split(source, split).features
    images = embed_images(model, features, dev)
    text = embed_captions(model, np.asarray([ids], dtype=np.int64), np.asarray([len(ids)], dtype=np.int64), dev)
    scores = (text @ images.T)[0]
    top = torch.topk(scores, min(k, len(scores))).indices.tolist()
    names = image_names(source, split) or [f"{split} image {i}" for i in range(len(images))]
    hits = [(names[i], float(scores[i])) for i in top]
    slug = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-")[:60] or "query"
    gallery = gallery_html(query, hits, run / "search" / f"{slug}.html")
    return SearchResult(stage, hits, unknown, gallery)

"""Search an index in both directions: text -> images, image -> captions.

One :class:`Retriever` serves ``webvse search``, the HTTP API and its page, so all three
answer the same query the same way. A text query is tokenised with the run's vocabulary
and encoded by the run's model; an image is named by its sha256 (an item of the collection:
its stored embedding) or uploaded (decoded under the features step's guards, the same CNN
forward at the same precision as the run's features, then the run's image branch).

Scores are cosines in the joint space, which mean little alone (a good match of a small
model can be 0.3), so every answer carries the query's score range over the collection
(min, median, max) next to each hit's rank and cosine.
"""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from storage.errors import InputError, MissingInputError, WebvseError
from storage.layout import INDEX_CAPTIONS_FILE, INDEX_ITEMS_FILE, INDEX_IVF_FILE, VOCAB_FILE
from storage.tables import index_captions_schema, index_items_schema, read_arrow, vectors_matrix
from tasks.imaging.features import cnn_pixels, decode_rgb
from tasks.serving.index import model_checkpoint, read_manifest
from tasks.serving.vector_search import Neighbours, VectorSearch
from tasks.training.runs import final_stage_store
from webvse_model.cnn import build_encoder, cnn_features, encoder_of_features
from webvse_model.encoders import JointEmbedding
from webvse_model.inference import embed_captions
from webvse_model.text import SPECIAL_TOKENS, Vocabulary, tokenize
from webvse_model.train import load_model, pick_device

MAX_K = 100  # hits per page
MAX_DEPTH = 1_000  # deepest rank a page may reach (k x page)
MAX_QUERY_CHARS = 500
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
THUMBNAIL_PIXELS = 320
_IMAGE_ID = re.compile(r"[0-9a-f]{64}")


class StaleIndexError(WebvseError):
    """The run's model changed since its index was built (retrained, resumed, rolled forward)."""


class UnknownItemError(MissingInputError):
    """An image id that is well formed but not in this collection."""


@dataclass(frozen=True)
class ImageHit:
    rank: int
    id: str
    score: float
    source: str
    split: str
    labels: list[str]


@dataclass(frozen=True)
class CaptionHit:
    rank: int
    text: str
    score: float
    image_id: str
    split: str
    own: bool  # one of the query image's own captions (ground truth)


@dataclass(frozen=True)
class Answer:
    """One page of hits for one query, with what makes its scores readable."""

    direction: str  # text-to-images | image-to-captions
    query: str
    k: int
    page: int
    total: int  # how many candidates were ranked
    score_min: float
    score_median: float
    score_max: float
    took_ms: float
    hits: list[Any] = field(default_factory=list)
    unknown_words: list[str] = field(default_factory=list)


@dataclass
class LoadedIndex:
    """An index in memory: items and captions, their vector searches and the manifest."""

    manifest: dict[str, Any]
    items: pd.DataFrame  # sha256, path, split, source, labels
    images: VectorSearch
    captions: pd.DataFrame  # caption_id, image_sha256, split, text
    caption_vectors: VectorSearch | None

    def __post_init__(self) -> None:
        self.row_of = {sha: i for i, sha in enumerate(self.items["sha256"])}

    @classmethod
    def read(cls, folder: Path, nprobe: int | None = None) -> LoadedIndex:
        manifest = read_manifest(folder)
        dim = int(manifest["dim"])
        items = read_arrow(folder / INDEX_ITEMS_FILE, index_items_schema(dim))
        captions = read_arrow(folder / INDEX_CAPTIONS_FILE, index_captions_schema(dim))
        ivf = folder / INDEX_IVF_FILE
        images = VectorSearch.load(
            vectors_matrix(items, "embedding", dim), ivf if ivf.is_file() else None, nprobe or int(manifest["settings"]["nprobe"])
        )
        bank = VectorSearch(vectors_matrix(captions, "embedding", dim)) if len(captions) else None
        return cls(manifest, items.drop(["embedding"]).to_pandas(), images, captions.drop(["embedding"]).to_pandas(), bank)


def check_page(k: int, page: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InputError(f"k must be between 1 and {MAX_K}, got {k}")
    if page < 1:
        raise InputError(f"page starts at 1, got {page}")
    if k * page > MAX_DEPTH:
        raise InputError(f"page {page} of {k} reaches rank {k * page}; results go {MAX_DEPTH} deep")


def check_image_id(image_id: str) -> str:
    if not _IMAGE_ID.fullmatch(image_id):
        raise InputError("an image id is the 64 lower-case hex digits of the image's sha256 (as the results give it)")
    return image_id


def _page_of(found: Neighbours, k: int, page: int) -> tuple[np.ndarray, np.ndarray, int]:
    start = k * (page - 1)
    return found.rows[start : start + k], found.scores[start : start + k], start


class Retriever:
    """A trained run's model, vocabulary and one index of it: answers queries both ways."""

    def __init__(
        self, index: LoadedIndex, model: JointEmbedding, vocab: Vocabulary, device: torch.device, feature_model: str
    ) -> None:
        self.index, self.model, self.vocab, self.device = index, model.eval(), vocab, device
        self.feature_model = feature_model
        self._cnn: tuple[Any, torch.nn.Module, bool] | None = None
        self._cnn_lock = threading.Lock()
        self.thumbnail = lru_cache(maxsize=512)(self._thumbnail)

    @classmethod
    def open(cls, folder: str | Path, device: str = "auto", nprobe: int | None = None) -> Retriever:
        """Load an index folder and the model it was built with (refusing a stale one)."""
        where = Path(folder)
        index = LoadedIndex.read(where, nprobe)
        run = where.parents[1]
        stage, checkpoint = model_checkpoint(run)
        if checkpoint != index.manifest["checkpoint_sha256"]:
            raise StaleIndexError(
                f"{where} was built with another {index.manifest['stage']} checkpoint than {run.name}/{stage} has now; "
                f"rebuild it: webvse index --run {run}"
            )
        dev = pick_device(device)
        model = load_model(final_stage_store(run), "best", dev)
        return cls(index, model, Vocabulary.load(run / VOCAB_FILE), dev, index.manifest["feature_model"])

    # ------------------------------------------------------------------ text -> images
    def encode_text(self, query: str) -> tuple[np.ndarray, list[str]]:
        """The query's joint-space vector and its words the model does not know."""
        text = query.strip()
        if not text:
            raise InputError("the query is empty: type a few words, e.g. 'a dog runs on the beach'")
        if len(text) > MAX_QUERY_CHARS:
            raise InputError(f"the query is {len(text)} characters long; at most {MAX_QUERY_CHARS}")
        words = tokenize(text)
        unknown = [w for w in words if w not in self.vocab]
        if not words or len(unknown) == len(words):  # an all-<unk> caption ranks images arbitrarily
            known = ", ".join(self.vocab.tokens[len(SPECIAL_TOKENS) :][:8])
            said = f"none of its words ({', '.join(unknown)})" if words else "no word"
            raise InputError(
                f"the query has {said} in the model's vocabulary ({len(self.vocab) - len(SPECIAL_TOKENS)} words, e.g. {known})"
            )
        ids = self.vocab.encode(words)
        vector = embed_captions(
            self.model, np.asarray([ids], dtype=np.int64), np.asarray([len(ids)], dtype=np.int64), self.device
        )
        return vector.numpy()[0], unknown

    def text_to_images(self, query: str, k: int = 10, page: int = 1) -> Answer:
        check_page(k, page)
        started = time.perf_counter()
        vector, unknown = self.encode_text(query)
        found = self.index.images.neighbours(vector, k * page)
        rows, scores, start = _page_of(found, k, page)
        items = self.index.items
        hits = [
            ImageHit(start + n + 1, items["sha256"][r], float(s), items["source"][r], items["split"][r], list(items["labels"][r]))
            for n, (r, s) in enumerate(zip(rows.tolist(), scores.tolist()))
        ]
        took = (time.perf_counter() - started) * 1000
        return Answer(
            "text-to-images",
            query.strip(),
            k,
            page,
            len(items),
            found.score_min,
            found.score_median,
            found.score_max,
            took,
            hits,
            unknown,
        )

    # ------------------------------------------------------------------ image -> captions
    def item(self, image_id: str) -> pd.Series:
        """The collection's item named by ``image_id`` (a sha256), or UnknownItemError."""
        row = self.index.row_of.get(check_image_id(image_id))
        if row is None:
            raise UnknownItemError(
                f"image {image_id} is not in this index ({self.index.manifest['collection']}, {len(self.index.items)} images)"
            )
        return self.index.items.iloc[row]

    def _cnn_parts(self) -> tuple[Any, torch.nn.Module, bool]:
        with self._cnn_lock:
            if self._cnn is None:
                spec, bf16 = encoder_of_features(self.feature_model)
                _, net, _ = build_encoder(spec.name)
                self._cnn = (spec.pixels(), net.to(self.device).to(memory_format=torch.channels_last), bf16)
            return self._cnn

    def encode_upload(self, data: bytes) -> np.ndarray:
        """An uploaded image's joint-space vector: the features step's decoding and CNN, then the image branch."""
        if not data:
            raise InputError("the upload is empty: choose an image file")
        if len(data) > MAX_UPLOAD_BYTES:
            raise InputError(f"the upload is {len(data) / 2**20:.1f} MB; at most {MAX_UPLOAD_BYTES // 2**20} MB")
        transform, net, bf16 = self._cnn_parts()
        try:
            pixels = cnn_pixels(io.BytesIO(data), transform)
        except InputError as problem:
            raise InputError(f"the upload is not an image this server can read: {problem}") from None
        features = cnn_features(net, pixels[None], self.device, bf16)
        with torch.inference_mode():
            return self.model.encode_images(features.to(self.device)).float().cpu().numpy()[0]

    def image_to_captions(self, vector: np.ndarray, query: str, k: int = 10, page: int = 1, own_image: str = "") -> Answer:
        """The caption bank ranked for an image vector; ``own_image`` marks that image's own captions."""
        check_page(k, page)
        bank = self.index.caption_vectors
        if bank is None:
            raise MissingInputError("this index has no caption bank (its data root has no clean captions)")
        started = time.perf_counter()
        found = bank.neighbours(vector, k * page)
        rows, scores, start = _page_of(found, k, page)
        captions = self.index.captions
        hits = [
            CaptionHit(start + n + 1, captions["text"][r], float(s), captions["image_sha256"][r], captions["split"][r],
                       bool(own_image) and captions["image_sha256"][r] == own_image)
            for n, (r, s) in enumerate(zip(rows.tolist(), scores.tolist()))
        ]  # fmt: skip
        took = (time.perf_counter() - started) * 1000
        return Answer(
            "image-to-captions", query, k, page, len(captions), found.score_min, found.score_median, found.score_max, took, hits
        )

    def captions_for_item(self, image_id: str, k: int = 10, page: int = 1) -> Answer:
        self.item(image_id)  # a well-formed id of this collection
        row = self.index.row_of[image_id]
        return self.image_to_captions(self.index.images.vectors[row], image_id, k, page, own_image=image_id)

    def captions_for_upload(self, data: bytes, name: str = "upload", k: int = 10, page: int = 1) -> Answer:
        check_page(k, page)
        return self.image_to_captions(self.encode_upload(data), name, k, page)

    # ------------------------------------------------------------------ what a page shows
    def _thumbnail(self, image_id: str) -> bytes:
        path = Path(self.item(image_id)["path"])  # the collection's own record: never a path from a request
        try:
            image = decode_rgb(path)
        except (InputError, OSError) as problem:
            raise MissingInputError(f"image {image_id} cannot be shown: {problem}") from None
        return jpeg_thumbnail(image)

    def health(self) -> dict[str, Any]:
        m = self.index.manifest
        return {
            "status": "ok", "run": m["run"], "stage": m["stage"], "collection": m["collection"], "items": len(self.index.items),
            "captions": len(self.index.captions), "search": m["search"], "recall_at_10_vs_exact": m["recall_at_10_vs_exact"],
            "test_metrics": m["test_metrics"], "built_at": m["built_at"], "feature_model": self.feature_model,
        }  # fmt: skip


def preview_data_uri(data: bytes) -> str:
    """A small JPEG data URI of an uploaded image, so the page can show what was searched with."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_thumbnail(decode_rgb(io.BytesIO(data)))).decode()


def jpeg_thumbnail(image: Image.Image) -> bytes:
    """At most ``THUMBNAIL_PIXELS`` on a side, as JPEG: what the page shows (never the original file)."""
    image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()

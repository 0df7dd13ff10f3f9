"""Where a run's features and captions come from: a VSE++ precomp folder or a data root.

* ``precomp``: ``{split}_ims.npy`` + ``{split}_caps.txt`` (+ webvse's tag and web arrays),
  see :mod:`webvse_model.datasets.precomp`;
* ``parquet``: a webvse data root: ``clean/images.parquet``, ``clean/captions.parquet``
  and the feature shards ``features/<feature_model>/``, joined by image sha256.

Both become the same :class:`CaptionedImages`, so training and evaluation do not care.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from storage.errors import InputError
from storage.layout import VECTORS_FILE, DataRoot
from storage.tables import (
    CLEAN_CAPTIONS,
    CLEAN_IMAGES,
    WEB_PHOTOS,
    read_features,
    read_table,
)
from tasks.imaging.features import unreadable_images
from tasks.text.keywords import union_in_order
from tasks.text.word_vectors import load_keyed_vectors, tag_features
from webvse_model.data import CaptionedImages, WebPairs, pad_token_ids
from webvse_model.datasets.precomp import PRECOMP_WEB_FILES, read_precomp_split, read_precomp_web
from webvse_model.settings import ConfigError
from webvse_model.text import Vocabulary, tokenize

SOURCE_KINDS = ("precomp", "parquet")


@dataclass(frozen=True)
class DataSource:
    """A run's data: ``kind`` and ``path`` (precomp folder or data root)."""

    path: str
    kind: str = "precomp"
    captions_per_image: int = 5
    train_split: str = "train"
    val_split: str = "dev"
    test_split: str = "test"
    feature_model: str = ""
    skip_unreadable: bool = True  # images the features step could not decode are left out (else: an error)

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ConfigError(f"data.kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if self.captions_per_image < 1:
            raise ConfigError(f"data.captions_per_image must be >= 1, got {self.captions_per_image}")
        if self.kind == "parquet" and not self.feature_model:
            raise ConfigError("data.feature_model must name the features/<model> folder of a parquet data root")


@dataclass
class RawSplit:
    """Features, caption texts and their image rows, before tokenisation."""

    features: np.ndarray
    captions: list[str]
    caption_image: np.ndarray
    tag_vectors: np.ndarray | None = None
    left_out: tuple[str, ...] = ()  # images of the split that could not be decoded (skipped)


def _precomp_split(source: DataSource, split: str) -> RawSplit:
    data = read_precomp_split(source.path, split, source.captions_per_image)
    caption_image = np.arange(len(data.captions)) // source.captions_per_image
    return RawSplit(data.features, data.captions, caption_image, data.tag_vectors)


def _parquet_split(source: DataSource, split: str, grouped: bool) -> RawSplit:
    root = DataRoot.resolve(source.path)
    images = read_table(root.clean_images, CLEAN_IMAGES)
    images = images[images["split"] == split].reset_index(drop=True)
    if images.empty:
        raise InputError(f"{root.clean_images} has no images in split {split!r}")
    folder = root.features_dir(source.feature_model)
    found = read_features(folder)
    images, left_out = _without_unreadable(images, root, source, split)
    missing = images.loc[~images["sha256"].isin(found.row_of), "path"].tolist()
    if missing:
        raise InputError(
            f"{len(missing)} images of split {split!r} have no features in {folder} (first: {missing[0]}); run the features step"
        )
    features = found.rows(images["sha256"])
    captions = read_table(root.clean_captions, CLEAN_CAPTIONS)
    index_of = {image_id: i for i, image_id in enumerate(images["image_id"])}
    captions = captions[captions["image_id"].isin(index_of)].copy()
    captions["image_row"] = captions["image_id"].map(index_of)
    captions = captions.sort_values(["image_row", "caption_id"], kind="stable")
    if grouped:  # evaluation needs exactly k captions per image, in image order
        k = source.captions_per_image
        per_image = captions.groupby("image_row").size().reindex(range(len(images)), fill_value=0)
        if (per_image < k).any():
            short = images["image_id"][int(np.argmax(per_image.to_numpy() < k))]
            raise InputError(f"split {split!r}: image {short} has fewer than {k} captions in {root.clean_captions}")
        captions = captions.groupby("image_row", sort=True).head(k)
    tag_vectors = _tag_vectors(root, captions, len(images))
    return RawSplit(features, captions["text"].tolist(), captions["image_row"].to_numpy(), tag_vectors, tuple(left_out))


def _without_unreadable(images: pd.DataFrame, root: DataRoot, source: DataSource, split: str) -> tuple[pd.DataFrame, list[str]]:
    """``images`` less those the features step could not decode, and their paths."""
    unreadable = images["sha256"].isin(unreadable_images(root, source.feature_model))
    if not unreadable.any():
        return images, []
    paths = images.loc[unreadable, "path"].tolist()
    if not source.skip_unreadable:
        failures = root.feature_failures(source.feature_model)
        raise InputError(f"{len(paths)} image(s) of split {split!r} could not be read (first: {paths[0]}; all in {failures})")
    return images[~unreadable].reset_index(drop=True), paths


def _tag_vectors(root: DataRoot, captions: pd.DataFrame, num_images: int) -> np.ndarray | None:
    """Mean word vector of each image's dummy tags, when the keywords and vectors steps ran."""
    vectors_file = root.vectors_dir / VECTORS_FILE
    if not vectors_file.is_file() or not captions["dummy_tags"].map(len).any():
        return None
    tags: list[list[str]] = [[] for _ in range(num_images)]
    rows = captions["image_row"].to_numpy()
    order = np.argsort(rows, kind="stable")  # each image's captions together, in caption order
    dummy_tags = captions["dummy_tags"].to_numpy()
    for row, members in itertools.groupby(order, key=rows.__getitem__):
        tags[int(row)] = union_in_order(dummy_tags[i] for i in members)
    return tag_features(tags, load_keyed_vectors(vectors_file)).vectors


def read_split(source: DataSource, split: str, grouped: bool = True) -> RawSplit:
    """A split's raw data; ``grouped`` asks for exactly k captions per image (evaluation)."""
    return _precomp_split(source, split) if source.kind == "precomp" else _parquet_split(source, split, grouped)


def load_split(
    source: DataSource,
    split: str,
    vocab: Vocabulary,
    grouped: bool = True,
    log: Callable[[str], None] = print,
    raw: RawSplit | None = None,
) -> CaptionedImages:
    """Tokenise and encode a split into training arrays (saying which unreadable images it left out);
    ``raw``: the split as :func:`read_split` already read it (a run reads its train split once)."""
    raw = raw if raw is not None else read_split(source, split, grouped)
    if raw.left_out:
        shown = ", ".join(raw.left_out[:3]) + (f" and {len(raw.left_out) - 3} more" if len(raw.left_out) > 3 else "")
        log(f"split {split!r}: {len(raw.left_out)} unreadable image(s) left out ({shown}); see features/*/failures.parquet")
    tokens, lengths = pad_token_ids([vocab.encode(tokenize(c)) for c in raw.captions])
    return CaptionedImages(raw.features, tokens, lengths, raw.caption_image, raw.tag_vectors, name=f"{source.path}:{split}")


def web_subset(sha256: pd.Series, fraction: float) -> np.ndarray:
    """Which photos a ``fraction`` of the web data keeps: those whose image hash falls below it.

    By content, not by position: the 25 % subset lies inside the 50 % one, which lies inside
    all, whatever order the crawl stored them in, so a curve over fractions adds data.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"train.web_fraction must be in (0, 1], got {fraction}")
    return np.array([int(sha[:15], 16) / 16**15 < fraction for sha in sha256], dtype=bool)


def has_web_data(source: DataSource) -> bool:
    """Whether the source holds web pairs at all (their files exist), without loading them."""
    if source.kind == "precomp":
        return any((Path(source.path) / name).is_file() for name in PRECOMP_WEB_FILES)
    root = DataRoot.resolve(source.path)
    return root.web_photos.is_file() and (root.vectors_dir / VECTORS_FILE).is_file()


def load_web(source: DataSource, fraction: float = 1.0) -> WebPairs | None:
    """Stage II web pairs of the source, or None when it has none.

    From a data root: the crawl's kept photos that have features and at least one
    English tag with a word vector (the others are counted in the name, not used);
    ``fraction`` < 1 keeps that share of them (:func:`web_subset`).
    """
    if source.kind == "precomp":
        web = read_precomp_web(source.path)
        return None if web is None else WebPairs(web.features, web.tag_vectors, web.keyword_rank, name=f"{source.path}:web")
    if not has_web_data(source):
        return None
    root = DataRoot.resolve(source.path)
    vectors_file = root.vectors_dir / VECTORS_FILE
    photos = read_table(root.web_photos, WEB_PHOTOS)
    photos = photos[(photos["status"] == "kept") & (photos["sha256"] != "")].drop_duplicates("sha256").reset_index(drop=True)
    if fraction < 1:
        photos = photos[web_subset(photos["sha256"], fraction)].reset_index(drop=True)
    folder = root.features_dir(source.feature_model)
    found = read_features(folder)
    photos = photos[photos["sha256"].isin(found.row_of)].reset_index(drop=True)
    tags = tag_features([list(t) for t in photos["english_tags"]], load_keyed_vectors(vectors_file))
    usable = np.flatnonzero(tags.has_vector)
    if len(usable) == 0:
        return None
    features = found.rows(photos["sha256"].iloc[usable])
    share = f", {fraction:.0%} of the kept photos" if fraction < 1 else ""
    name = f"{root.web_photos} ({len(usable)} pairs{share}; {tags.excluded} photos without a known tag left out)"
    return WebPairs(features, tags.vectors[usable], photos["keyword_rank"].to_numpy()[usable], name=name)

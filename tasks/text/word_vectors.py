"""Word vectors (gensim) and the tag feature of an image: the mean vector of its tags.

* A pretrained file when configured: word2vec binary (``.bin``, e.g. GoogleNews 300-d)
  or text (``.txt``/``.vec``), or gensim's own ``.kv``.
* Else Word2Vec trained on the pipeline's own text. The training "sentences" are
  **one document per image**: the 5 captions of a clean image joined, and the English
  tags of a web photo. Captions of one image describe the same thing, so this context
  teaches that ``dog`` and ``puppy`` are interchangeable, which single captions never
  show (synonyms never share a sentence).

The tag feature (paper, Sec. 3.2) of an image is the mean of the vectors of its tags
that have one. An image none of whose tags has a vector is excluded from the tag
loss and counted, never given a silent zero vector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from gensim.models import KeyedVectors, Word2Vec

from storage.atomic import atomic_write_path
from storage.errors import InputError, MissingInputError
from storage.layout import VECTORS_FILE, DataRoot
from storage.tables import CLEAN_CAPTIONS, WEB_PHOTOS, read_table
from tasks.data.flickr8k import read_flickr8k_captions
from tasks.text.backends import lemma_of_tag
from tasks.text.keywords import group_key
from tasks.text.stop_words import STOP_WORDS
from webvse_model.text import tokenize


@dataclass(frozen=True)
class TagFeatures:
    vectors: np.ndarray  # [images, dim] float32; rows of excluded images are zero and masked out
    has_vector: np.ndarray  # [images] bool
    tags_used: np.ndarray  # [images] int: how many of the image's tags had a vector

    @property
    def excluded(self) -> int:
        return int((~self.has_vector).sum())


def load_keyed_vectors(path: str | Path) -> KeyedVectors:
    """A pretrained vectors file; the format follows the suffix."""
    source = Path(path)
    if not source.is_file():
        raise MissingInputError(
            f"word vectors file {source} does not exist: give a word2vec .bin/.txt or gensim .kv file "
            f"(vectors.path), or leave it empty to train Word2Vec on the captions and tags"
        )
    try:
        if source.suffix == ".kv":
            return KeyedVectors.load(str(source))
        return KeyedVectors.load_word2vec_format(str(source), binary=source.suffix == ".bin")
    except Exception as exc:  # gensim raises many kinds for a bad file
        raise InputError(f"{source} is not a readable word-vectors file: {exc}") from exc


def train_word2vec(
    documents: Sequence[Sequence[str]], dim: int = 300, window: int = 10, min_count: int = 2, epochs: int = 20, seed: int = 0
) -> KeyedVectors:
    """Skip-gram Word2Vec on ``documents`` (lists of words). One worker: reproducible."""
    docs = [list(d) for d in documents if len(d) >= 2]
    if not docs:
        raise InputError("no document with 2 or more words to train word vectors on")
    model = Word2Vec(docs, vector_size=dim, window=window, min_count=min_count, sg=1, epochs=epochs, seed=seed, workers=1)
    return model.wv


def save_keyed_vectors(vectors: KeyedVectors, path: str | Path) -> Path:
    """Atomically, in word2vec binary format (readable by any word2vec tool)."""
    target = Path(path)
    with atomic_write_path(target) as tmp:
        vectors.save_word2vec_format(str(tmp), binary=True)
    return target


def tag_features(tag_lists: Sequence[Sequence[str]], vectors: KeyedVectors) -> TagFeatures:
    """Mean word vector of each image's tags (see the module doc for excluded images)."""
    out = np.zeros((len(tag_lists), vectors.vector_size), dtype=np.float32)
    used = np.zeros(len(tag_lists), dtype=np.int64)
    for row, tags in enumerate(tag_lists):
        known = [t for t in tags if t in vectors.key_to_index]
        if known:
            out[row] = vectors[known].mean(axis=0)
            used[row] = len(known)
    return TagFeatures(out, used > 0, used)


def caption_documents(captions: pd.DataFrame) -> list[list[str]]:
    """One document per clean image: the grouped lemmas of all its captions' content words."""
    docs = []
    for _, group in captions.sort_values("caption_id", kind="stable").groupby("image_id", sort=False):
        docs.append(_content_words(t for tokens in group["tokens"] for t in tokens))
    return docs


def _content_words(tokens: Iterable[str]) -> list[str]:
    words = (group_key(lemma_of_tag(t)) for t in tokens)
    return [w for w in words if w.isalpha() and len(w) > 1 and w not in STOP_WORDS]


def caption_file_documents(csv_path: str | Path, skip_images: Iterable[str] = ()) -> list[list[str]]:
    """One document per image of a Flickr8k-style ``image,caption`` file (e.g. the 7,091
    caption-only images of ``all_captions.txt``), skipping images already in the clean set."""
    skip = set(skip_images)
    return [
        _content_words(t for caption in captions for t in tokenize(caption))
        for name, captions in read_flickr8k_captions(csv_path).items()
        if name not in skip
    ]


def run_vectors(
    root: DataRoot,
    pretrained: str | Path | None = None,
    web_documents: Sequence[Sequence[str]] = (),
    dim: int = 300,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Path:
    """Load or train the word vectors; saved as ``vectors/word_vectors.bin`` under the data root."""
    if pretrained:
        vectors = load_keyed_vectors(pretrained)
        source = f"pretrained {pretrained}"
    else:
        docs = caption_documents(read_table(root.clean_captions, CLEAN_CAPTIONS)) + [list(d) for d in web_documents]
        vectors = train_word2vec(docs, dim=dim, seed=seed)
        source = f"Word2Vec on {len(docs)} documents"
    target = save_keyed_vectors(vectors, root.vectors_dir / VECTORS_FILE)
    log(f"vectors: {len(vectors.key_to_index)} words x {vectors.vector_size} from {source} -> {target}")
    return target


# ------------------------------------------------------------------ documents from the web tags
def web_tag_documents(root: DataRoot) -> list[list[str]]:
    """One document per kept web photo: its English tags (empty when nothing was crawled)."""
    if not root.web_photos.is_file():
        return []
    photos = read_table(root.web_photos, WEB_PHOTOS)
    return [list(tags) for tags in photos.loc[photos["status"] == "kept", "english_tags"] if len(tags)]

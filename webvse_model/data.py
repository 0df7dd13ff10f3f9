"""In-memory pair data, batching by array indexing, and the curriculum sampler.

Features are precomputed, so a batch is a gather from a few arrays: no per-item
Python, no DataLoader workers. Every epoch's order is a pure function of
``(seed, epoch)``, which is what makes ``resume`` reproduce an uninterrupted run
exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from storage.errors import InputError


def _check_finite(name: str, array: np.ndarray) -> None:
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=tuple(range(1, array.ndim))).sum())
        raise InputError(f"{name}: {bad} rows contain NaN or infinite values")


def pad_token_ids(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id lists with 0 into ``[M, T]`` plus their lengths ``[M]``."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    if len(sequences) and lengths.min() < 1:
        raise InputError("every encoded caption needs at least one token")
    padded = np.zeros((len(sequences), int(lengths.max(initial=1))), dtype=np.int64)
    for row, ids in enumerate(sequences):
        padded[row, : len(ids)] = ids
    return padded, lengths


@dataclass
class CaptionedImages:
    """One split of a clean dataset: image features, captions, optional tag vectors.

    ``caption_image[j]`` is the image row of caption ``j``. For evaluation the
    captions must be grouped ``k`` per image in image order (see :meth:`check_grouped`).
    ``has_tags[i]`` is False for an image none of whose tags has a word vector: such
    an image is excluded from the tag loss and counted, never given a zero vector.
    """

    features: np.ndarray
    tokens: np.ndarray
    lengths: np.ndarray
    caption_image: np.ndarray
    tag_vectors: np.ndarray | None = None
    has_tags: np.ndarray | None = None
    name: str = "dataset"

    def __post_init__(self) -> None:
        self.features = np.ascontiguousarray(self.features, dtype=np.float32)
        if self.features.ndim != 2 or len(self.features) == 0:
            raise InputError(f"{self.name}: image features must be a non-empty [N, V] matrix, got {self.features.shape}")
        _check_finite(f"{self.name} image features", self.features)
        n = len(self.features)
        self.caption_image = np.asarray(self.caption_image, dtype=np.int64)
        if len(self.tokens) != len(self.caption_image) or len(self.lengths) != len(self.caption_image):
            raise InputError(f"{self.name}: {len(self.tokens)} captions but {len(self.caption_image)} caption->image links")
        if len(self.caption_image) == 0:
            raise InputError(f"{self.name}: no captions")
        if self.caption_image.min() < 0 or self.caption_image.max() >= n:
            raise InputError(f"{self.name}: a caption points to an image outside 0..{n - 1}")
        if self.tag_vectors is not None:
            self.tag_vectors = np.ascontiguousarray(self.tag_vectors, dtype=np.float32)
            if self.tag_vectors.shape[0] != n:
                raise InputError(f"{self.name}: {self.tag_vectors.shape[0]} tag vectors for {n} images")
            _check_finite(f"{self.name} tag vectors", self.tag_vectors)
            if self.has_tags is None:
                self.has_tags = np.abs(self.tag_vectors).sum(axis=1) > 0
            self.has_tags = np.asarray(self.has_tags, dtype=bool)

    @property
    def num_images(self) -> int:
        return len(self.features)

    @property
    def num_captions(self) -> int:
        return len(self.caption_image)

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def tag_dim(self) -> int:
        return 0 if self.tag_vectors is None else int(self.tag_vectors.shape[1])

    @property
    def images_without_tags(self) -> int:
        return 0 if self.has_tags is None else int((~self.has_tags).sum())

    def check_grouped(self, captions_per_image: int) -> None:
        """Raise unless caption ``j`` belongs to image ``j // k`` for every ``j``."""
        expected = np.arange(self.num_images * captions_per_image) // captions_per_image
        if self.num_captions != len(expected) or not np.array_equal(self.caption_image, expected):
            raise InputError(
                f"{self.name}: evaluation needs exactly {captions_per_image} captions per image, grouped in image order "
                f"({self.num_images} images, {self.num_captions} captions)"
            )


@dataclass
class WebPairs:
    """Web images with their tag vectors and the rank of the keyword that found them."""

    features: np.ndarray
    tag_vectors: np.ndarray
    keyword_rank: np.ndarray
    name: str = "web pairs"

    def __post_init__(self) -> None:
        self.features = np.ascontiguousarray(self.features, dtype=np.float32)
        self.tag_vectors = np.ascontiguousarray(self.tag_vectors, dtype=np.float32)
        self.keyword_rank = np.asarray(self.keyword_rank, dtype=np.int64)
        if not (len(self.features) == len(self.tag_vectors) == len(self.keyword_rank)) or len(self.features) == 0:
            raise InputError(
                f"{self.name}: need equal, non-zero numbers of features ({len(self.features)}), "
                f"tag vectors ({len(self.tag_vectors)}) and keyword ranks ({len(self.keyword_rank)})"
            )
        _check_finite(f"{self.name} features", self.features)
        _check_finite(f"{self.name} tag vectors", self.tag_vectors)

    def __len__(self) -> int:
        return len(self.features)


def epoch_order(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of an epoch, a pure function of ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(num_items)


def batch_slices(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive batches of ``order``; the last, smaller one is kept if it has >= 2 rows."""
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        if len(batch) >= 2:  # a ranking loss needs a negative
            yield batch


@dataclass
class CaptionBatch:
    """A training batch of image-caption pairs (and the images' tag vectors)."""

    features: torch.Tensor
    tokens: torch.Tensor
    lengths: torch.Tensor
    image_ids: torch.Tensor
    tag_vectors: torch.Tensor | None
    has_tags: torch.Tensor | None


def caption_batch(data: CaptionedImages, caption_rows: np.ndarray, device: torch.device) -> CaptionBatch:
    """Gather a batch of captions and their images, trimmed to the longest caption."""
    images = data.caption_image[caption_rows]
    lengths = data.lengths[caption_rows]
    tokens = data.tokens[caption_rows, : int(lengths.max())]

    def to(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True)

    has_tags = data.has_tags[images] if data.has_tags is not None else None
    tags = data.tag_vectors[images] if data.tag_vectors is not None else None
    return CaptionBatch(
        features=to(data.features[images]),
        tokens=to(tokens),
        lengths=torch.from_numpy(lengths),
        image_ids=to(images),
        tag_vectors=to(tags) if tags is not None else None,
        has_tags=to(has_tags) if has_tags is not None else None,
    )

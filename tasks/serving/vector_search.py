"""Nearest neighbours by cosine among L2-normalised vectors: exact, or faiss IVF for large sets.

Exact search is one matrix product (``queries @ vectors.T``) and a partial sort: at 100K
vectors of 1,024 floats it answers in milliseconds and is always right, so it is the
default. Past ``approximate_from`` vectors a faiss ``IndexIVFFlat`` (inner product) answers
by scanning only ``nprobe`` of its ``nlist`` clusters; how much that loses is *measured*
when it is built (recall@10 against exact search on sample queries) and reported with it.

numpy and faiss only: no torch, no Prefect, so the benchmark and the server share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.errors import InputError, MissingInputError

SCORE_SAMPLE = 10_000  # a query's score range on an approximate index is read from this many items


@dataclass(frozen=True)
class Neighbours:
    """Hits of one query, best first, and the spread of its scores over the collection."""

    rows: np.ndarray  # [k] int64 item rows
    scores: np.ndarray  # [k] float32 cosine
    score_min: float
    score_median: float
    score_max: float


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise MissingInputError("approximate search needs faiss: pip install -e '.[serve]' (faiss-cpu)") from exc
    return faiss


def default_nlist(count: int) -> int:
    """About sqrt(N) clusters, at most 1,024 (k-means over more costs minutes on 2 cores)."""
    return int(min(1024, max(1, round(count**0.5))))


class VectorSearch:
    """Cosine top-k over ``vectors`` ([N, D] float32, rows L2-normalised)."""

    def __init__(self, vectors: np.ndarray, ivf: Any = None, nprobe: int = 32) -> None:
        if vectors.ndim != 2 or len(vectors) == 0:
            raise InputError(f"an index needs a non-empty [N, D] matrix, got shape {vectors.shape}")
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.ivf = ivf
        if ivf is not None:
            ivf.nprobe = nprobe
        step = max(1, len(self.vectors) // SCORE_SAMPLE)
        self._sample = self.vectors[::step]  # the score range of an approximate index

    @property
    def approximate(self) -> bool:
        return self.ivf is not None

    def __len__(self) -> int:
        return len(self.vectors)

    @classmethod
    def build(
        cls, vectors: np.ndarray, approximate: bool, nlist: int | None = None, nprobe: int = 32, seed: int = 0
    ) -> VectorSearch:
        """Exact, or an IVF index trained on (a sample of) the vectors themselves."""
        if not approximate:
            return cls(vectors)
        faiss = _faiss()
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        lists = nlist or default_nlist(len(data))
        quantizer = faiss.IndexFlatIP(data.shape[1])
        ivf = faiss.IndexIVFFlat(quantizer, data.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = seed
        ivf.train(data)
        ivf.add(data)
        return cls(data, ivf, nprobe)

    def save_ivf(self, path: Path) -> None:
        if self.ivf is not None:
            _faiss().write_index(self.ivf, str(path))

    @classmethod
    def load(cls, vectors: np.ndarray, ivf_path: Path | None, nprobe: int = 32) -> VectorSearch:
        ivf = _faiss().read_index(str(ivf_path)) if ivf_path is not None else None
        return cls(vectors, ivf, nprobe)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [Q, k], rows [Q, k])``, best first; k is capped at the index size."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, len(self.vectors))
        if self.ivf is not None:
            scores, rows = self.ivf.search(q, k)
            return scores, rows.astype(np.int64)
        return _top_k(q @ self.vectors.T, k)

    def neighbours(self, query: np.ndarray, k: int) -> Neighbours:
        """The top ``k`` of one query and its score range: over every item from the one product
        exact search computes anyway, or over a fixed sample of ``SCORE_SAMPLE`` items on an
        approximate index, which never scores them all."""
        q = np.asarray(query, dtype=np.float32)
        if self.ivf is None:
            spread = self.vectors @ q
            scores, rows = _top_k(spread[None, :], min(k, len(self.vectors)))
        else:
            scores, rows = self.search(q[None, :], k)
            spread = self._sample @ q
        valid = rows[0] >= 0  # faiss pads with -1 when its probed lists hold fewer than k
        return Neighbours(rows[0][valid], scores[0][valid], float(spread.min()), float(np.median(spread)), float(spread.max()))

    def recall_against_exact(self, queries: np.ndarray, k: int = 10) -> float:
        """Share of the exact top-``k`` this index returns, averaged over ``queries`` (1.0 if exact)."""
        if self.ivf is None:
            return 1.0
        _, approx = self.search(queries, k)
        _, exact = VectorSearch(self.vectors).search(queries, k)
        hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact)]
        return float(np.mean(hits) / min(k, len(self.vectors)))


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` best ``(scores, columns)``, best first; equal scores: the lower column first."""
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=1)
    rows = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(scores, rows, axis=1), rows.astype(np.int64)

"""The VSE++ evaluation loop, one query at a time, kept as the slow yardstick.

This follows ``vsepp/evaluation.py`` (``i2t``/``t2i``) line by line in spirit: for each
query, score every candidate, ``argsort`` descending, find where the ground truth
landed. Two deliberate differences, both documented in :mod:`webvse_model.metrics`:
scores in float64 and ``kind="stable"`` (the original's unstable sort leaves ties
undefined). Tests and ``benchmarks/bench_evaluation.py`` check the vectorized metrics
against it; nothing on a hot path uses it.
"""

from __future__ import annotations

import numpy as np

from webvse_model.metrics import DirectionMetrics, RetrievalMetrics


def reference_ranks(images: np.ndarray, captions: np.ndarray, captions_per_image: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """0-based ``(i2t, t2i)`` ranks by the per-query loop."""
    ims = np.asarray(images, dtype=np.float64)
    caps = np.asarray(captions, dtype=np.float64)
    k = captions_per_image
    n = ims.shape[0]
    i2t = np.zeros(n, dtype=np.int64)
    for index in range(n):
        d = caps @ ims[index]
        inds = np.argsort(d, kind="stable")[::-1]
        position = np.empty_like(inds)
        position[inds] = np.arange(inds.size)
        i2t[index] = position[k * index : k * index + k].min()
    t2i = np.zeros(n * k, dtype=np.int64)
    for index in range(n):
        queries = caps[k * index : k * index + k]
        d = queries @ ims.T
        for i in range(k):
            inds = np.argsort(d[i], kind="stable")[::-1]
            t2i[k * index + i] = np.where(inds == index)[0][0]
    return i2t, t2i


def reference_evaluate(images: np.ndarray, captions: np.ndarray, captions_per_image: int = 5) -> RetrievalMetrics:
    """Metrics from :func:`reference_ranks`."""
    i2t, t2i = reference_ranks(images, captions, captions_per_image)
    return RetrievalMetrics(DirectionMetrics.from_ranks(i2t), DirectionMetrics.from_ranks(t2i))

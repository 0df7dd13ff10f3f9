"""Vectorized metrics vs the per-query VSE++ loop, constructed ranks, ties, protocols."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webvse_model.metrics import DirectionMetrics, evaluate_embeddings, folded, retrieval_ranks, run_protocol
from webvse_model.reference_metrics import reference_evaluate, reference_ranks


def _unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(6))
def test_equals_reference_on_random_inputs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k, dim = int(rng.integers(2, 60)), int(rng.integers(1, 6)), int(rng.integers(2, 64))
    images, captions = _unit(rng, n, dim), _unit(rng, n * k, dim)
    chunk = int(rng.integers(1, n + 1))
    fast = retrieval_ranks(images, captions, k, chunk_size=chunk)
    slow = reference_ranks(images, captions, k)
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])
    assert evaluate_embeddings(images, captions, k) == reference_evaluate(images, captions, k)


@pytest.mark.parametrize("seed", range(6))
def test_equals_reference_with_many_exact_ties(seed: int) -> None:
    # entries in {-0.5, 0, 0.5}: every dot product is exact, so ties are real ties
    rng = np.random.default_rng(100 + seed)
    n, k = int(rng.integers(2, 40)), int(rng.integers(1, 6))
    images = rng.integers(-1, 2, (n, 4)).astype(np.float32) * 0.5
    captions = rng.integers(-1, 2, (n * k, 4)).astype(np.float32) * 0.5
    fast = retrieval_ranks(images, captions, k, chunk_size=int(rng.integers(1, n + 1)))
    slow = reference_ranks(images, captions, k)
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])


def test_perfect_embeddings_give_perfect_scores() -> None:
    images = np.eye(4, dtype=np.float32)
    captions = np.repeat(images, 2, axis=0)  # two exact captions per image
    metrics = evaluate_embeddings(images, captions, 2)
    for direction in (metrics.i2t, metrics.t2i):
        assert (direction.r1, direction.r5, direction.r10, direction.medr, direction.meanr) == (100, 100, 100, 1, 1)
    assert metrics.rsum == 600


def test_constructed_ranks() -> None:
    # images e0, e1, e2; captions (one per image) are e1, e1, e2
    images = np.eye(3, dtype=np.float32)
    captions = np.eye(3, dtype=np.float32)[[1, 1, 2]]
    i2t, t2i = retrieval_ranks(images, captions, 1)
    # image 0 scores every caption 0: order 2, 1, 0 (larger index first) -> own caption 0 is 3rd
    # image 1 scores captions 0 and 1 at 1: caption 1 first -> rank 0
    # image 2 scores only caption 2 at 1 -> rank 0
    assert i2t.tolist() == [2, 0, 0]
    # caption 0 (= e1) ranks image 1 first, then the 0-score tie images 2, 0 -> own image 0 is 3rd
    assert t2i.tolist() == [2, 0, 0]


def test_tie_rule_is_larger_index_first() -> None:
    images = np.ones((3, 2), dtype=np.float32)
    captions = np.ones((6, 2), dtype=np.float32)
    i2t, t2i = retrieval_ranks(images, captions, 2)
    assert i2t.tolist() == [4, 2, 0]
    assert t2i.tolist() == [2, 2, 1, 1, 0, 0]
    assert reference_ranks(images, captions, 2)[0].tolist() == [4, 2, 0]


def test_direction_metrics_follow_vsepp_formulas() -> None:
    ranks = np.array([0, 0, 3, 7, 20])  # 0-based
    m = DirectionMetrics.from_ranks(ranks)
    assert (m.r1, m.r5, m.r10) == (40.0, 60.0, 80.0)
    assert m.medr == 4.0  # floor(median 3) + 1
    assert m.meanr == pytest.approx(7.0)  # mean 6 + 1
    even = DirectionMetrics.from_ranks(np.array([0, 1, 2, 4]))
    assert even.medr == 2.0  # floor(1.5) + 1


def test_folds_average_then_recompute_rsum() -> None:
    rng = np.random.default_rng(7)
    images, captions = _unit(rng, 20, 8), _unit(rng, 100, 8)
    result = folded(images, captions, 5, fold_size=10)
    assert len(result.folds) == 2
    f0, f1 = result.folds
    assert result.metrics.i2t.r1 == pytest.approx((f0.i2t.r1 + f1.i2t.r1) / 2)
    assert result.metrics.t2i.meanr == pytest.approx((f0.t2i.meanr + f1.t2i.meanr) / 2)
    assert result.metrics.rsum == pytest.approx(result.metrics.i2t.recall_sum + result.metrics.t2i.recall_sum)
    assert f0 == evaluate_embeddings(images[:10], captions[:50], 5)


def test_protocols_check_their_sizes() -> None:
    rng = np.random.default_rng(8)
    images, captions = _unit(rng, 10, 4), _unit(rng, 50, 4)
    with pytest.raises(ValueError, match="coco-1k needs 5000"):
        run_protocol("coco-1k", images, captions)
    with pytest.raises(ValueError, match="unknown protocol"):
        run_protocol("imagenet", images, captions)
    assert run_protocol("all", images, captions).metrics == evaluate_embeddings(images, captions)


def test_accepts_torch_tensors_and_float64() -> None:
    rng = np.random.default_rng(9)
    images, captions = _unit(rng, 12, 6), _unit(rng, 60, 6)
    a = evaluate_embeddings(torch.from_numpy(images), torch.from_numpy(captions))
    b = evaluate_embeddings(images.astype(np.float64), captions.astype(np.float64))
    assert a == b == reference_evaluate(images, captions)


@pytest.mark.parametrize(
    ("images", "captions", "k", "message"),
    [
        (np.zeros((3, 4)), np.zeros((14, 4)), 5, "need 15 caption rows"),
        (np.zeros((3, 4)), np.zeros((15, 5)), 5, "4-d but captions are 5-d"),
        (np.full((3, 4), np.nan), np.zeros((15, 4)), 5, "NaN"),
        (np.zeros((0, 4)), np.zeros((0, 4)), 5, "non-empty"),
        (np.zeros((3, 4), dtype=np.int64), np.zeros((15, 4)), 5, "floats"),
        (np.zeros((3, 4)), np.zeros((15, 4)), 0, "captions_per_image"),
    ],
)
def test_bad_input_is_named(images: np.ndarray, captions: np.ndarray, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_embeddings(images, captions, k)


@pytest.mark.parametrize("shape", [(1, 1), (3, 700), (600, 5), (255, 255), (256, 511), (300, 1000)])
def test_blocked_byte_count_equals_a_plain_count(shape: tuple[int, int]) -> None:
    from webvse_model.metrics import _count

    for mask in (torch.rand(shape) > 0.3, torch.ones(shape, dtype=torch.bool)):  # all-ones: the overflow case
        assert torch.equal(_count(mask, 1), mask.sum(1).int())
        assert torch.equal(_count(mask, 0), mask.sum(0).int())

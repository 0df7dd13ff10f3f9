"""Cross-modal retrieval metrics, equal to the VSE++ evaluation protocol but vectorized.

Protocol (VSE++ ``evaluation.i2t`` / ``t2i``): ``images [N, D]``, ``captions [N*k, D]``,
caption ``j`` belongs to image ``j // k``.

* image -> text: the rank of the image's *best-ranked own caption* among all captions;
* text -> image: the rank of the caption's image among all images;
* R@K = percentage of queries with rank < K (0-based), medr = floor(median) + 1,
  meanr = mean + 1, rsum = the six recalls summed.

**Tie rule.** VSE++ ranks with ``numpy.argsort(d)[::-1]``; numpy's default sort is
not stable, so the original code's result under exact ties is not defined. webvse
fixes it to the stable variant, ``argsort(d, kind="stable")[::-1]``: among equal
scores, the candidate with the *larger index* ranks first. The rank of a target
``t`` is thus ``#{s_j > s_t} + #{s_j == s_t and j > t}``.

**Exactness.** Scores are computed in float32 (one GEMM per chunk, both directions
from the same chunk), and every comparison that float32 cannot decide -- a candidate
within ``tol`` of the target, where ``tol`` is a generous bound on float32 dot-product
error -- is redone in float64. Ranks therefore equal those of the float64 scores, and
a float64 per-query reference gives identical numbers (see ``tests/`` and
``benchmarks/bench_evaluation.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from storage.errors import InputError
from webvse_model.settings import PROTOCOLS

RECALL_KS: tuple[int, ...] = (1, 5, 10)
_PAIR_BLOCK = 256  # float64 re-checks per block: 2 x 2 MB at D=1024, reused by malloc (8 MB blocks page-fault)


@dataclass(frozen=True)
class DirectionMetrics:
    """Recall in percent; ranks 1-based."""

    r1: float
    r5: float
    r10: float
    medr: float
    meanr: float

    @classmethod
    def from_ranks(cls, ranks: np.ndarray) -> DirectionMetrics:
        """``ranks`` are 0-based, as in the VSE++ code."""
        r = np.asarray(ranks)  # integer ranks: median and mean come out as float64
        r1, r5, r10 = (100.0 * float(np.mean(r < k)) for k in RECALL_KS)
        return cls(r1, r5, r10, medr=float(np.floor(np.median(r)) + 1), meanr=float(r.mean() + 1))

    @property
    def recall_sum(self) -> float:
        return self.r1 + self.r5 + self.r10


@dataclass(frozen=True)
class RetrievalMetrics:
    """Both directions; ``rsum`` = R@1+R@5+R@10 of image->text plus text->image."""

    i2t: DirectionMetrics
    t2i: DirectionMetrics

    @property
    def rsum(self) -> float:
        return self.i2t.recall_sum + self.t2i.recall_sum

    def to_dict(self) -> dict[str, float]:
        """Flat ``{"i2t_r1": .., ..., "rsum": ..}`` for tables and logs."""
        flat = {f"{d}_{k}": v for d in ("i2t", "t2i") for k, v in asdict(getattr(self, d)).items()}
        flat["rsum"] = self.rsum
        return flat

    def summary(self) -> str:
        i, t = self.i2t, self.t2i
        return (
            f"i2t R@1 {i.r1:.1f} R@5 {i.r5:.1f} R@10 {i.r10:.1f} medr {i.medr:g} | "
            f"t2i R@1 {t.r1:.1f} R@5 {t.r5:.1f} R@10 {t.r10:.1f} medr {t.medr:g} | rsum {self.rsum:.1f}"
        )


@dataclass(frozen=True)
class ProtocolResult:
    """A protocol's headline metrics plus, for folded protocols, each fold's."""

    protocol: str
    metrics: RetrievalMetrics
    folds: tuple[RetrievalMetrics, ...] = ()


def _as_tensor(name: str, x: Any, device: torch.device | None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dim() != 2 or t.shape[0] == 0:
        raise InputError(f"{name} must be a non-empty [rows, D] matrix, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise InputError(f"{name} must hold floats, got {t.dtype}")
    # one cheap reduction first: NaN/inf anywhere make the sum non-finite (an overflowing
    # sum of finite values only triggers the exact, slower check)
    if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise InputError(f"{name} contain NaN or infinite values")
    return t.to(device) if device is not None else t


def _exact_dots(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """float64 ``<a[rows[p]], b[cols[p]]>`` for each pair p, in bounded blocks.

    float32 inputs are exact in float64, so this is the float64 score of the pair;
    one code path for every pair keeps equal pairs bit-identical.
    """
    out = torch.empty(rows.numel(), dtype=torch.float64, device=a.device)
    for start in range(0, rows.numel(), _PAIR_BLOCK):
        stop = start + _PAIR_BLOCK
        out[start:stop] = (a[rows[start:stop]].double() * b[cols[start:stop]].double()).sum(dim=1)
    return out


def _band_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of the True entries of a sparse 2-D mask.

    On the CPU numpy's flatnonzero is ~10x faster than torch.nonzero for this.
    """
    if mask.device.type == "cpu":
        flat = torch.from_numpy(np.flatnonzero(mask.numpy()))
        return flat // mask.shape[1], flat % mask.shape[1]
    rows, cols = mask.nonzero(as_tuple=True)
    return rows, cols


def _exact_winners(
    img: torch.Tensor,
    cap: torch.Tensor,
    image_rows: torch.Tensor,
    caption_rows: torch.Tensor,
    query: torch.Tensor,
    candidate: torch.Tensor,
    target: torch.Tensor,
    target_candidate: torch.Tensor,
) -> torch.Tensor:
    """Queries whose near-tie candidate really ranks above the target, decided in float64.

    Each pair p is (image_rows[p], caption_rows[p]); the query is one side, the
    candidate the other. A candidate wins if its exact score is higher, or equal with
    a larger index (the tie rule); the target itself never counts.
    """
    keep = candidate != target_candidate
    score = _exact_dots(img, cap, image_rows[keep], caption_rows[keep])
    d = score - target[keep]
    wins = (d > 0) | ((d == 0) & (candidate[keep] > target_candidate[keep]))
    return query[keep][wins]


def _count(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Count True along ``dim`` (0 or 1) of a 2-D mask, as int32.

    Sums bytes in blocks of 255 with a uint8 accumulator (no overflow possible), then
    adds the per-block counts in int32: ~5x faster than summing into int32 directly,
    which first copies the whole mask to int32.
    """
    u8 = mask.view(torch.uint8)
    length = u8.shape[dim]
    whole = (length // 255) * 255
    counts = u8.narrow(dim, whole, length - whole).sum(dim=dim, dtype=torch.uint8).to(torch.int32)
    if whole:
        blocks = u8.narrow(dim, 0, whole).unflatten(dim, (whole // 255, 255))
        counts += blocks.sum(dim=dim + 1, dtype=torch.uint8).sum(dim=dim, dtype=torch.int32)
    return counts


def _float32_tolerance(images: torch.Tensor, captions: torch.Tensor) -> float:
    """A bound on |float32 dot - exact dot|: 2 sqrt(D) unit roundoffs of the largest |a||b|.

    The float32 GEMM error measured at D=1024 on unit vectors is at most ~1.3e-7
    (MKL, 125M pairs); this gives 3.8e-6, a margin of about 30x, while leaving only a
    few candidates per query to re-check in float64. (TF32 is switched off during
    evaluation on CUDA: its error would be far larger.)
    """
    dim = images.shape[1]
    scale = float(images.norm(dim=1).max()) * float(captions.norm(dim=1).max())
    return 2.0 * dim**0.5 * 2.0**-24 * max(scale, 1e-30)


@contextlib.contextmanager
def _full_float32_matmul(device: torch.device) -> Iterator[None]:
    """Switch TF32 off on CUDA for the duration: the tolerance assumes true float32."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def retrieval_ranks(
    images: Any,
    captions: Any,
    captions_per_image: int = 5,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
    max_chunk_bytes: int = 16 << 20,
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks ``(i2t [N], t2i [N*k])`` under the protocol and tie rule above.

    Captions are processed in chunks of ``chunk_size`` rows (default: a ~16 MB score
    block, small enough for the comparisons to run in cache); peak memory beyond the
    inputs is a few such blocks, so 5K x 25K at D=1024 needs well under 2 GB.
    """
    dev = torch.device(device) if device is not None else None
    img = _as_tensor("images", images, dev)
    cap = _as_tensor("captions", captions, dev if dev is not None else img.device)
    n, k = img.shape[0], int(captions_per_image)
    if k < 1:
        raise InputError(f"captions_per_image must be >= 1, got {captions_per_image}")
    if cap.shape[1] != img.shape[1]:
        raise InputError(f"images are {img.shape[1]}-d but captions are {cap.shape[1]}-d")
    if cap.shape[0] != n * k:
        raise InputError(f"{n} images x {k} captions each need {n * k} caption rows, got {cap.shape[0]}")
    if chunk_size is not None and chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")

    with _full_float32_matmul(img.device):
        return _ranks(img, cap, k, chunk_size, max_chunk_bytes)


def _ranks(
    img: torch.Tensor, cap: torch.Tensor, k: int, chunk_size: int | None, max_chunk_bytes: int
) -> tuple[np.ndarray, np.ndarray]:
    n = img.shape[0]
    img32, cap32 = img.float(), cap.float()
    tol = _float32_tolerance(img32, cap32)
    m = n * k
    cap_index = torch.arange(m, device=img.device)
    cap_image = cap_index // k
    if chunk_size is None:
        chunk_size = max(32, max_chunk_bytes // (4 * n))

    # Every float64 score goes through _exact_dots, so that one (image, caption) pair
    # always gets bit-identical scores whichever step asks for it.
    # image -> text target: the best own caption (ties -> larger index)
    own = _exact_dots(img32, cap32, cap_image, cap_index).view(n, k)
    best_score = own.max(dim=1, keepdim=True).values
    last_best = (k - 1) - (own == best_score).flip(1).to(torch.int8).argmax(dim=1)
    i2t_col = torch.arange(n, device=img.device) * k + last_best
    i2t_target64 = best_score.squeeze(1)
    # text -> image target: the caption's own image
    t2i_target64 = own.reshape(m)

    i2t = torch.zeros(n, dtype=torch.int32, device=img.device)
    t2i = torch.zeros(m, dtype=torch.int32, device=img.device)
    i2t_above = (i2t_target64.float() + tol).unsqueeze(0)
    i2t_band = (i2t_target64.float() - tol).unsqueeze(0)
    img32_t = img32.t().contiguous()
    # Chunks of captions against all images (a GEMM of this shape runs ~12% faster on
    # CPU than image chunks against all captions); one score block and two masks,
    # reused for every chunk.
    block = torch.empty(min(chunk_size, m), n, dtype=torch.float32, device=img.device)
    surely_block = torch.empty(block.shape, dtype=torch.bool, device=img.device)
    maybe_block = torch.empty(block.shape, dtype=torch.bool, device=img.device)
    for start in range(0, m, chunk_size):
        stop = min(start + chunk_size, m)
        rows = stop - start
        sims = torch.mm(cap32[start:stop], img32_t, out=block[:rows])  # [captions, images], both directions
        surely_above, maybe_above = surely_block[:rows], maybe_block[:rows]
        caps = torch.arange(start, stop, device=img.device)

        # text -> image: each row (caption) against its own image's score
        target = t2i_target64[start:stop].float().unsqueeze(1)
        torch.gt(sims, target + tol, out=surely_above)
        torch.ge(sims, target - tol, out=maybe_above)
        t2i[start:stop] += _count(surely_above, dim=1)
        r, i = _band_positions(maybe_above.logical_xor_(surely_above))
        j = caps[r]
        winners = _exact_winners(img32, cap32, i, j, query=j, candidate=i, target=t2i_target64[j], target_candidate=cap_image[j])
        t2i.index_add_(0, winners, torch.ones_like(winners, dtype=torch.int32))

        # image -> text: column i counts the captions of this chunk that beat image i's best own caption
        torch.gt(sims, i2t_above, out=surely_above)
        torch.ge(sims, i2t_band, out=maybe_above)
        i2t += _count(surely_above, dim=0)
        r, i = _band_positions(maybe_above.logical_xor_(surely_above))
        j = caps[r]
        winners = _exact_winners(img32, cap32, i, j, query=i, candidate=j, target=i2t_target64[i], target_candidate=i2t_col[i])
        i2t.index_add_(0, winners, torch.ones_like(winners, dtype=torch.int32))
    return i2t.cpu().numpy().astype(np.int64), t2i.cpu().numpy().astype(np.int64)


def evaluate_embeddings(
    images: Any,
    captions: Any,
    captions_per_image: int = 5,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
) -> RetrievalMetrics:
    """R@1/5/10, medr, meanr both ways and rsum for L2-normalised embeddings (see module doc)."""
    i2t, t2i = retrieval_ranks(images, captions, captions_per_image, chunk_size, device)
    return RetrievalMetrics(DirectionMetrics.from_ranks(i2t), DirectionMetrics.from_ranks(t2i))


def mean_metrics(results: Sequence[RetrievalMetrics]) -> RetrievalMetrics:
    """Average every field over folds; ``rsum`` is then recomputed from the means."""
    if not results:
        raise InputError("no results to average")

    def avg(direction: str) -> DirectionMetrics:
        return DirectionMetrics(
            **{
                f.name: float(np.mean([getattr(getattr(r, direction), f.name) for r in results]))
                for f in fields(DirectionMetrics)
            }
        )

    return RetrievalMetrics(avg("i2t"), avg("t2i"))


def folded(images: Any, captions: Any, captions_per_image: int = 5, fold_size: int = 1000, **kw: Any) -> ProtocolResult:
    """Consecutive folds of ``fold_size`` images, metrics averaged (COCO 1K x 5)."""
    n, k = len(images), captions_per_image  # numpy arrays and tensors slice alike: evaluate_embeddings checks each fold
    if n % fold_size:
        raise InputError(f"{n} images do not split into folds of {fold_size}")
    folds = tuple(
        evaluate_embeddings(images[s : s + fold_size], captions[s * k : (s + fold_size) * k], k, **kw)
        for s in range(0, n, fold_size)
    )
    return ProtocolResult(f"{n // fold_size}x{fold_size}", mean_metrics(folds), folds)


def run_protocol(name: str, images: Any, captions: Any, captions_per_image: int = 5, **kw: Any) -> ProtocolResult:
    """The standard protocols by name.

    * ``coco-1k``: 5,000 test images in 5 folds of 1,000, averaged;
    * ``coco-5k``: all 5,000 test images at once;
    * ``f30k-1k``: the 1,000 Flickr30K test images;
    * ``all``: every given image at once (small or custom test sets).
    """
    n = len(images)
    expected = {"coco-1k": 5000, "coco-5k": 5000, "f30k-1k": 1000}
    if name not in PROTOCOLS:
        raise InputError(f"unknown protocol {name!r}; choose one of {PROTOCOLS}")
    if name in expected and n != expected[name]:
        raise InputError(f"protocol {name} needs {expected[name]} test images, got {n}; use 'all' for other sizes")
    if name == "coco-1k":
        result = folded(images, captions, captions_per_image, **kw)  # COCO's folds of 1,000 are folded's default
        return ProtocolResult(name, result.metrics, result.folds)
    return ProtocolResult(name, evaluate_embeddings(images, captions, captions_per_image, **kw))

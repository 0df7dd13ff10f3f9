"""Evaluation speed: evaluate_embeddings vs the per-query VSE++ loop vs a bare matmul.

Same random L2-normalised inputs for all three; the vectorized result must equal the
loop's on every number (asserted). Prints medians and ratios. Default: 5,000 images x
25,000 captions, D=1024 (the COCO 5K protocol's size); the loop alone takes minutes.

    python benchmarks/bench_evaluation.py [--images 5000] [--dim 1024] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from webvse_model.metrics import evaluate_embeddings
from webvse_model.reference_metrics import reference_evaluate


def timed(fn, repeats: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    k = args.captions_per_image
    gen = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(args.images, args.dim, generator=gen), dim=1).to(args.device)
    captions = torch.nn.functional.normalize(torch.randn(args.images * k, args.dim, generator=gen), dim=1).to(args.device)

    def bare() -> torch.Tensor:
        sims = images @ captions.t()
        if sims.is_cuda:
            torch.cuda.synchronize()
        return sims

    t_bare, _ = timed(bare, args.repeats)
    t_fast, fast = timed(lambda: evaluate_embeddings(images, captions, k), args.repeats)
    print(f"{args.images} images x {args.images * k} captions, D={args.dim}, {torch.get_num_threads()} threads, {args.device}")
    print("running the per-query loop once (slow) ...", flush=True)
    t_loop, slow = timed(lambda: reference_evaluate(images.cpu().numpy(), captions.cpu().numpy(), k), 1)
    assert fast == slow, f"vectorized and per-query results differ:\n{fast}\n{slow}"
    print(f"{'method':<34}{'median s':>10}{'vs bare':>10}{'speed-up vs loop':>18}")
    for name, t in (
        ("bare similarity matmul", t_bare),
        ("evaluate_embeddings (vectorized)", t_fast),
        ("per-query VSE++ loop (numpy)", t_loop),
    ):
        print(f"{name:<34}{t:>10.3f}{t / t_bare:>9.2f}x{t_loop / t:>17.1f}x")
    print(f"all numbers equal: {fast.summary()}")


if __name__ == "__main__":
    main()

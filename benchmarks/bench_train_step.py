"""Training step: fp32, bf16 autocast and ``auto`` (bf16 per branch where measured faster), and
Trainer's full step vs the bare forward+backward.

The full step = batch gather from the in-memory arrays + forward of image, sentence and
tag branches + both ranking losses + backward + grad clip + Adam step. The bare step =
forward + the same losses + backward on tensors already in place. Each is timed in fp32,
in bf16 autocast on every branch, and as ``precision: auto`` chooses per branch
(``webvse_model.branch_precision``, whose per-branch measurement is printed too); the
baseline is the fastest bare step of the run, and every row prints its ratio to it. Paper
sizes by default: features 2048, D=1024, GRU 1024, batch 128 (``--demo-sizes``: the demo's).

    python benchmarks/bench_train_step.py [--steps 20] [--device cpu] [--demo-sizes]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from webvse_model.branch_precision import BranchPrecision
from webvse_model.data import CaptionedImages, caption_batch, pad_token_ids
from webvse_model.encoders import seeded_model
from webvse_model.losses import ranking_loss
from webvse_model.precision import cpu_has_native_bf16
from webvse_model.settings import ModelConfig, StageConfig
from webvse_model.train import Trainer


def median_time(fn: Callable[[np.ndarray], None], items: list[np.ndarray]) -> float:
    times = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])  # the first steps warm up allocators and pick kernels


def time_steps(
    precision: str, data: CaptionedImages, batches: list[np.ndarray], config: ModelConfig, device: torch.device
) -> tuple[float, float, BranchPrecision]:
    """(full step, bare step) median seconds at one precision, from the same initial weights, and the branches' precision."""
    model = seeded_model(config, 0).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(model, StageConfig(batch_size=len(batches[0])), folder, device, precision=precision, log=lambda m: None)

        branches = trainer.branch_precision

        def full_step(rows: np.ndarray) -> None:
            loss = trainer._caption_step_loss(data, rows)
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            trainer.optimizer.step()
            sync()

        fixed = caption_batch(data, batches[0], device)

        def bare_step(_: np.ndarray) -> None:
            with branches.autocast(device, "image"):
                images = model.encode_images(fixed.features).float()
            with branches.autocast(device, "sentence"):
                captions = model.encode_captions(fixed.tokens, fixed.lengths).float()
            with branches.autocast(device, "tag"):
                tags = model.encode_tags(fixed.tag_vectors).float()
            loss = ranking_loss(images, captions, fixed.image_ids) + ranking_loss(images, tags, fixed.image_ids)
            model.zero_grad(set_to_none=True)
            loss.backward()
            sync()

        return median_time(full_step, batches), median_time(bare_step, batches), branches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--demo-sizes", action="store_true", help="the demo's model: features 1280, D=256, GRU 256, words 100")
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    if args.demo_sizes:
        n_images, vocab = 3000, 195
        config = ModelConfig(1280, vocab, 100, embed_dim=256, hidden_dim=512, word_dim=100, gru_hidden=256)
    else:
        n_images, vocab = 2000, 10000
        config = ModelConfig(image_dim=2048, vocab_size=vocab, tag_dim=300)
    captions = [list(rng.integers(4, vocab, rng.integers(8, 16))) for _ in range(n_images * 5)]
    tokens, lengths = pad_token_ids(captions)
    data = CaptionedImages(
        rng.random((n_images, config.image_dim), dtype=np.float32), tokens, lengths, np.arange(n_images * 5) // 5,
        rng.standard_normal((n_images, config.tag_dim)).astype(np.float32),
    )  # fmt: skip
    batches = [rng.choice(len(captions), args.batch_size, replace=False) for _ in range(args.steps + 2)]
    times = {precision: time_steps(precision, data, batches, config, device) for precision in ("fp32", "bf16", "auto")}
    baseline = min(bare for _, bare, _ in times.values())
    native = f"native bf16 on this CPU: {cpu_has_native_bf16()}" if device.type == "cpu" else ""
    print(
        f"batch {args.batch_size}, features {config.image_dim}, D={config.embed_dim}, GRU {config.gru_hidden}, vocab {vocab}, "
        f"{device}, {torch.get_num_threads()} threads; {native}"
    )
    print(f"auto: {times['auto'][2].describe()}")
    print(f"{'step':<52}{'median ms':>12}{'vs fastest bare':>17}")
    for precision in ("bf16", "fp32", "auto"):
        full, bare, _ = times[precision]
        print(f"{f'{precision} bare forward+backward':<52}{bare * 1e3:>12.1f}{bare / baseline:>17.2f}")
        print(f"{f'{precision} full training step (gather..Adam step)':<52}{full * 1e3:>12.1f}{full / baseline:>17.2f}")
    print(
        f"full step, fp32 time / bf16 time: {times['fp32'][0] / times['bf16'][0]:.2f}x; fp32 / auto: {times['fp32'][0] / times['auto'][0]:.2f}x"
    )


if __name__ == "__main__":
    main()

"""Training step: fp32 vs bf16 autocast, and Trainer's full step vs the bare forward+backward.

The full step = batch gather from the in-memory arrays + forward of image, sentence and
tag branches + both ranking losses + backward + grad clip + Adam step. The bare step =
forward + the same losses + backward on tensors already in place. Each is timed in fp32
and in bf16 autocast (``webvse_model.precision``); the baseline is the bf16 bare step, the
fastest this machine can do, and every row prints its ratio to it. Paper sizes by default:
features 2048, D=1024, GRU 1024, batch 128.

    python benchmarks/bench_train_step.py [--steps 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from webvse_model.data import CaptionedImages, caption_batch, pad_token_ids
from webvse_model.encoders import JointEmbedding
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
    precision: str, data: CaptionedImages, batches: list[np.ndarray], vocab: int, device: torch.device
) -> tuple[float, float]:
    """(full step, bare step) median seconds at one precision, from the same initial weights."""
    torch.manual_seed(0)
    model = JointEmbedding(ModelConfig(image_dim=2048, vocab_size=vocab, tag_dim=300)).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(model, StageConfig(batch_size=len(batches[0])), folder, device, precision=precision, log=lambda m: None)

        def full_step(rows: np.ndarray) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=trainer.use_bf16):
                loss = trainer._caption_step_loss(data, rows)
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            trainer.optimizer.step()
            sync()

        fixed = caption_batch(data, batches[0], device)

        def bare_step(_: np.ndarray) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=trainer.use_bf16):
                images = model.encode_images(fixed.features)
                loss = ranking_loss(images.float(), model.encode_captions(fixed.tokens, fixed.lengths).float(), fixed.image_ids)
                loss = loss + ranking_loss(images.float(), model.encode_tags(fixed.tag_vectors).float(), fixed.image_ids)
            model.zero_grad(set_to_none=True)
            loss.backward()
            sync()

        return median_time(full_step, batches), median_time(bare_step, batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    n_images, vocab = 2000, 10000
    captions = [list(rng.integers(4, vocab, rng.integers(8, 16))) for _ in range(n_images * 5)]
    tokens, lengths = pad_token_ids(captions)
    data = CaptionedImages(
        rng.random((n_images, 2048), dtype=np.float32), tokens, lengths, np.arange(n_images * 5) // 5,
        rng.standard_normal((n_images, 300)).astype(np.float32),
    )  # fmt: skip
    batches = [rng.choice(len(captions), args.batch_size, replace=False) for _ in range(args.steps + 2)]
    times = {precision: time_steps(precision, data, batches, vocab, device) for precision in ("fp32", "bf16")}
    baseline = times["bf16"][1]
    native = f"native bf16 on this CPU: {cpu_has_native_bf16()}" if device.type == "cpu" else ""
    print(
        f"batch {args.batch_size}, features 2048, D=1024, GRU 1024, vocab {vocab}, {device}, {torch.get_num_threads()} threads; {native}"
    )
    print(f"{'step':<44}{'median ms':>12}{'vs bf16 bare':>14}")
    for precision in ("bf16", "fp32"):
        full, bare = times[precision]
        print(f"{f'{precision} bare forward+backward':<44}{bare * 1e3:>12.1f}{bare / baseline:>14.2f}")
        print(f"{f'{precision} full training step (gather..Adam step)':<44}{full * 1e3:>12.1f}{full / baseline:>14.2f}")
    print(f"bf16 speed-up of the full step: {times['fp32'][0] / times['bf16'][0]:.2f}x")


if __name__ == "__main__":
    main()

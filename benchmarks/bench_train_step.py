"""Training-step overhead: Trainer's full step vs the bare forward+backward of the same model.

The full step = batch gather from the in-memory arrays + forward of image, sentence and
tag branches + both ranking losses + backward + grad clip + Adam step. The bare step =
forward + the same losses + backward on tensors already in place. Prints medians and
the overhead ratio. Paper sizes by default: features 2048, D=1024, GRU 1024, batch 128.

    python benchmarks/bench_train_step.py [--steps 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from webvse_model.data import CaptionedImages, caption_batch, pad_token_ids
from webvse_model.encoders import JointEmbedding, ModelConfig
from webvse_model.losses import ranking_loss
from webvse_model.train import StageConfig, Trainer


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
    torch.manual_seed(0)
    model = JointEmbedding(ModelConfig(image_dim=2048, vocab_size=vocab, tag_dim=300)).to(device)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(model, StageConfig(batch_size=args.batch_size), folder, device, log=lambda m: None)
        batches = [rng.choice(len(captions), args.batch_size, replace=False) for _ in range(args.steps + 2)]

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()

        def full_step(rows: np.ndarray) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=trainer.use_amp):
                loss = trainer._caption_step_loss(data, rows)
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            trainer.optimizer.step()
            sync()

        fixed = caption_batch(data, batches[0], device)

        def bare_step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=trainer.use_amp):
                images = model.encode_images(fixed.features)
                loss = ranking_loss(images.float(), model.encode_captions(fixed.tokens, fixed.lengths).float(), fixed.image_ids)
                loss = loss + ranking_loss(images.float(), model.encode_tags(fixed.tag_vectors).float(), fixed.image_ids)
            model.zero_grad(set_to_none=True)
            loss.backward()
            sync()

        def median_time(fn, items) -> float:  # type: ignore[no-untyped-def]
            times = []
            for item in items:
                start = time.perf_counter()
                fn(item)
                times.append(time.perf_counter() - start)
            return statistics.median(times[2:])  # the first steps warm up allocators

        t_full = median_time(full_step, batches)
        t_bare = median_time(lambda _: bare_step(), batches)
    print(f"batch {args.batch_size}, features 2048, D=1024, GRU 1024, vocab {vocab}, {device}, {torch.get_num_threads()} threads")
    print(f"{'step':<40}{'median ms':>12}{'ratio':>8}")
    print(f"{'bare forward+backward':<40}{t_bare * 1e3:>12.1f}{1.0:>8.2f}")
    print(f"{'full training step (gather..Adam step)':<40}{t_full * 1e3:>12.1f}{t_full / t_bare:>8.2f}")


if __name__ == "__main__":
    main()

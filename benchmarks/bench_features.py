"""Feature extraction: end-to-end images/s (decode + resize + forward) vs the bare forward.

The baseline is the fastest bare forward this machine can do: the same encoder on
pre-decoded tensors at the same batch size, channels_last, in bf16 autocast (on a CPU
without native bf16, the fp32 channels_last forward is the faster one and becomes the
baseline). fp32 NCHW and fp32 channels_last bare forwards are printed beside it, and the
cosine of bf16 to fp32 features over every image. The batch is the features step's own
(8 on the CPU) unless ``--batch-size`` says otherwise. End to end reads JPEG files through the decoding of
``tasks.imaging.features`` at each precision and worker count. Images: the generated world's, or
``--images DIR`` (e.g. ../shared/data/flickr8k/images).

    python benchmarks/bench_features.py [--images DIR] [--count 384] [--batch-size 8] [--workers 0 1 2] [--precisions fp32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from storage.layout import DataRoot
from tasks.imaging.features import cnn_pixels, compute_features, forward_batch_size
from tasks.imaging.settings import FeatureSettings
from webvse_model.allocator import keep_freed_memory_for_reuse
from webvse_model.cnn import build_encoder
from webvse_model.precision import cpu_has_amx_bf16, cpu_has_native_bf16, use_bf16
from webvse_model.settings import DEFAULT_ENCODER
from webvse_world.clean import CleanSizes, generate_clean_dataset


def bare_forward(
    net: torch.nn.Module, batches: list[torch.Tensor], device: torch.device, channels_last: bool, bf16: bool
) -> tuple[float, torch.Tensor]:
    """(images/s, features of every image) of the forward alone."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device, memory_format=layout)
    inputs = [b.to(device).contiguous(memory_format=layout) for b in batches]
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        net(inputs[0])  # warm-up: oneDNN picks its kernels on the first call
        started = time.perf_counter()
        features = [net(x) for x in inputs]
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        return sum(len(b) for b in batches) / seconds, torch.cat(features).float().cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=None)
    parser.add_argument("--count", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the features step's (8 on the CPU, 64 on CUDA)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precisions", nargs="+", choices=["bf16", "fp32"], default=["bf16", "fp32"],
        help="fp32 alone on a CPU without native bf16, where bf16 is emulated (~20x slower) and no baseline",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.images) if args.images else Path(tmp) / "world"
        if not args.images:
            generate_clean_dataset(folder, CleanSizes(train=args.count, val=0, test=0))
        paths = sorted(str(p) for p in folder.rglob("*.jpg"))[: args.count]
        spec, net, _ = build_encoder(args.encoder)
        device = torch.device(args.device)
        args.batch_size = args.batch_size or forward_batch_size(device)
        keep_freed_memory_for_reuse()  # as the features step does: the bare forwards run under the same allocator
        transform = spec.pixels()
        batches = [
            torch.stack([cnn_pixels(p, transform) for p in paths[i : i + args.batch_size]])
            for i in range(0, len(paths), args.batch_size)
        ]
        # the bare network on inputs normalised beforehand: the step's per-batch normalisation is its cost
        inputs = [net.normalised(pixels) for pixels in batches]
        bare = {
            "fp32, NCHW": bare_forward(net.net, inputs, device, channels_last=False, bf16=False),
            "fp32, channels_last": bare_forward(net.net, inputs, device, channels_last=True, bf16=False),
        }
        if "bf16" in args.precisions:
            bare["bf16 autocast, channels_last"] = bare_forward(net.net, inputs, device, channels_last=True, bf16=True)
            cosines = torch.nn.functional.cosine_similarity(bare["fp32, NCHW"][1], bare["bf16 autocast, channels_last"][1])
        baseline_name = max(bare.keys() - {"fp32, NCHW"}, key=lambda k: bare[k][0])
        baseline = bare[baseline_name][0]
        frame = pd.DataFrame({"sha256": [f"{i:064x}" for i in range(len(paths))], "path": paths})
        rows = []
        for precision in args.precisions:
            for workers in args.workers:
                root = DataRoot.resolve(Path(tmp) / f"root-{precision}-{workers}")
                settings = FeatureSettings(
                    args.encoder, batch_size=args.batch_size, workers=workers, device=args.device, precision=precision
                )
                rows.append(
                    (precision, workers, compute_features(root, frame, settings, log=lambda m: None)["images_per_second"])
                )
    native = (
        f"native bf16 on this CPU: {cpu_has_native_bf16()}, AMX-BF16: {cpu_has_amx_bf16()} (precision auto: "
        f"{'bf16' if use_bf16('auto', device) else 'fp32'})"
        if device.type == "cpu"
        else ""
    )
    print(
        f"{len(paths)} JPEGs, {spec.encoder_id}, batch {args.batch_size}, {device}, {torch.get_num_threads()} torch threads; {native}"
    )
    cosine = (
        f"; cosine of bf16 to fp32 features: mean {cosines.mean():.5f}, min {cosines.min():.5f}"
        if "bf16" in args.precisions
        else ""
    )
    print(f"baseline: the {baseline_name} bare forward{cosine}")
    print(f"{'mode':<52}{'img/s':>8}{'vs baseline':>13}")
    for name, (rate, _) in bare.items():
        print(f"{f'bare forward, {name}':<52}{rate:>8.1f}{rate / baseline:>13.2f}")
    for precision, workers, rate in rows:
        print(f"{f'end to end, {precision}, {workers} decode threads':<52}{rate:>8.1f}{rate / baseline:>13.2f}")


if __name__ == "__main__":
    main()

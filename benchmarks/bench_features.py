"""Feature extraction: end-to-end images/s (decode + resize + forward) vs the bare forward.

The bare forward runs the same encoder on pre-decoded tensors at the same batch size;
end-to-end reads JPEG files through the DataLoader of ``tasks.features``. Prints
images/s and the ratio (goal: >= 0.85 of bare). Images: the generated world's, or
``--images DIR``.

    python benchmarks/bench_features.py [--images DIR] [--count 384] [--batch-size 64] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from storage.layout import DataRoot
from tasks.features import FeatureSettings, compute_features, load_rgb
from webvse_model.cnn import DEFAULT_ENCODER, build_encoder
from webvse_world.clean import CleanSizes, generate_clean_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=None)
    parser.add_argument("--count", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.images) if args.images else Path(tmp) / "world"
        if not args.images:
            generate_clean_dataset(folder, CleanSizes(train=args.count, val=0, test=0))
        paths = sorted(str(p) for p in folder.rglob("*.jpg"))[: args.count]
        spec, net, _ = build_encoder(args.encoder)
        device = torch.device(args.device)
        net = net.to(device)
        transform = spec.transform()
        batches = [torch.stack([transform(load_rgb(p)) for p in paths[i : i + args.batch_size]]) for i in range(0, len(paths), args.batch_size)]
        with torch.inference_mode():
            net(batches[0].to(device))  # warm-up
            started = time.perf_counter()
            for batch in batches:
                net(batch.to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            bare = len(paths) / (time.perf_counter() - started)
        frame = pd.DataFrame({"sha256": [f"{i:064x}" for i in range(len(paths))], "path": paths})
        rows = []
        for workers in args.workers:
            root = DataRoot.resolve(Path(tmp) / f"root{workers}")
            settings = FeatureSettings(args.encoder, batch_size=args.batch_size, workers=workers, device=args.device)
            rows.append((workers, compute_features(root, frame, settings, log=lambda m: None)["images_per_second"]))
    print(f"{len(paths)} JPEGs, {spec.encoder_id}, batch {args.batch_size}, {device}, {torch.get_num_threads()} torch threads")
    print(f"{'mode':<44}{'img/s':>8}{'vs bare':>9}")
    print(f"{'bare forward on pre-decoded tensors':<44}{bare:>8.1f}{1.0:>9.2f}")
    for workers, rate in rows:
        print(f"{f'end to end, {workers} DataLoader workers':<44}{rate:>8.1f}{rate / bare:>9.2f}")


if __name__ == "__main__":
    main()

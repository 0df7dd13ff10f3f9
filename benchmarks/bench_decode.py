"""Decoding an image into the CNN's input: the features step's path vs torchvision's usual one.

The baseline, measured in the same run on the same files: Pillow decodes the whole JPEG and
torchvision's ``Resize(256)``, ``CenterCrop(224)``, ``PILToTensor()`` resize it with Pillow's
kernel (what the features step did before). The step's path (``tasks.imaging.features.cnn_pixels``)
decodes a large JPEG at the smallest DCT scale that still covers the resize and resizes with
torch's uint8 kernel. Per photo size (real photos re-encoded at each size, JPEG quality 90), one
thread, as one decode thread or the in-loop decoder of the CPU step runs it. Also printed: how
far the step's pixels are from the baseline's (values of 0..255).

    python benchmarks/bench_decode.py [--images DIR] [--count 64] [--sizes 224x224 500x375 1024x768 4000x3000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms as T

from tasks.imaging.features import cnn_pixels
from webvse_model.cnn import encoder_spec
from webvse_model.settings import DEFAULT_ENCODER

FLICKR8K_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k" / "images"


def best_ms_per_image(decoders: list[Callable[[Path], torch.Tensor]], paths: list[Path], rounds: int = 7) -> list[float]:
    """Each decoder's fastest pass over the files, in ms per image; the decoders take turns
    round by round, so a slow spell of a shared machine falls on both and not on one."""
    best = [float("inf")] * len(decoders)
    for _ in range(rounds):
        for i, decode in enumerate(decoders):
            started = time.perf_counter()
            for path in paths:
                decode(path)
            best[i] = min(best[i], (time.perf_counter() - started) / len(paths) * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=FLICKR8K_IMAGES, help="real photos to re-encode at each size")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--sizes", nargs="+", default=["224x224", "500x375", "1024x768", "4000x3000"])
    args = parser.parse_args()
    sources = sorted(args.images.glob("*.jpg"))[: args.count]
    if not sources:
        raise SystemExit(f"no .jpg photos in {args.images}")
    torch.set_num_threads(1)
    baseline = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])
    pixels = encoder_spec(DEFAULT_ENCODER).pixels()

    def torchvision_pil(path: Path) -> torch.Tensor:
        with Image.open(path) as image:
            return baseline(image.convert("RGB"))

    def step(path: Path) -> torch.Tensor:
        return cnn_pixels(path, pixels)

    print(f"{len(sources)} photos from {args.images}, 1 thread; baseline: full decode + torchvision Resize/CenterCrop on Pillow")
    print(f"{'size':<12}{'baseline ms':>13}{'step ms':>10}{'speed-up':>10}{'max |diff|':>12}{'values differing':>18}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            width, height = (int(n) for n in size.split("x"))
            paths = []
            for i, source in enumerate(sources):
                path = Path(tmp) / f"{size}-{i}.jpg"
                with Image.open(source) as image:
                    image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)
                paths.append(path)
            before, after = best_ms_per_image([torchvision_pil, step], paths)
            gap = torch.stack([(step(p).int() - torchvision_pil(p).int()).abs() for p in paths])
            print(
                f"{size:<12}{before:>13.2f}{after:>10.2f}{before / after:>9.2f}x{int(gap.max()):>12}"
                f"{float((gap > 0).float().mean()):>17.2%}"
            )


if __name__ == "__main__":
    main()

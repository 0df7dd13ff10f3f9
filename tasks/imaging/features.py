"""CNN features: every clean and web image -> a CNN feature row, computed once.

Rows live in Parquet shards under ``features/<encoder id>/`` keyed by the image's
sha256 (the encoder id names model *and* preprocessing). Only images without a row
are computed, so a new image set that overlaps an old one costs only the difference.
Images that cannot be decoded (zero bytes, truncated, HTML saved as .jpg, bombs) are
recorded with a reason in ``failures.parquet`` of the same folder and skipped;
greyscale, CMYK, palette and alpha images are converted to RGB (alpha over white).

Throughput: the forward runs channels_last under ``inference_mode``, in bf16 autocast
where the hardware computes bf16 natively (``precision: auto``, see
:mod:`webvse_model.precision`); images are decoded in this process on the CPU (the forward
already uses every core) and by decode threads on CUDA, as uint8 (a quarter of float32's bytes),
pinned, copied without blocking and normalised on the GPU. Shards are written as they fill (memory stays flat) and atomically, so
a run killed mid-way resumes without recomputing finished shards and never sees a partial one.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import torch
from PIL import Image

from storage.atomic import sweep_partial_writes
from storage.errors import InputError, MissingInputError
from storage.layout import DataRoot
from storage.tables import (
    CLEAN_IMAGES,
    FEATURE_FAILURES,
    WEB_PHOTOS,
    append_rows,
    append_shard,
    feature_schema,
    read_shards,
    read_table,
)
from tasks.imaging.settings import FeatureSettings
from webvse_model.allocator import keep_freed_memory_for_reuse
from webvse_model.cnn import RESIZE, build_encoder, cnn_features, encoder_spec
from webvse_model.precision import use_bf16
from webvse_model.train import pick_device

MAX_PIXELS = 60_000_000
PROGRESS_SECONDS = 10.0


def load_rgb(path: str | Path, at_least: int = 0) -> Image.Image:
    """Open any image as RGB; raises InputError with a short reason when it cannot."""
    source = Path(path)
    if not source.is_file():
        raise InputError("missing file")
    if source.stat().st_size == 0:
        raise InputError("zero bytes")
    return decode_rgb(source, at_least)


def decode_rgb(source: Path | BinaryIO, at_least: int = 0) -> Image.Image:
    """Decode a file or a stream (an uploaded query image) as RGB, alpha over white, under the
    pixel guard; raises InputError with a short reason when it is no decodable image.

    ``at_least``: a JPEG is decoded at the smallest of libjpeg's scales (1/2, 1/4, 1/8) whose
    short side is still at least this many pixels; the DCT then skips the detail the resize would
    throw away (a 1024 x 768 photo decodes at 512 x 384, 2.8x faster with its resize; a camera's
    4000 x 3000 at 500 x 375)."""
    try:
        with Image.open(source) as image:
            if image.width * image.height > MAX_PIXELS:
                raise InputError(f"{image.width}x{image.height} exceeds the pixel guard")
            if at_least and image.format == "JPEG":
                short = min(image.size)
                image.draft(None, (-(-at_least * image.width // short), -(-at_least * image.height // short)))
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                canvas = Image.new("RGB", rgba.size, (255, 255, 255))
                canvas.paste(rgba, mask=rgba.getchannel("A"))
                return canvas
            return image if image.mode == "RGB" else image.convert("RGB")
    except ValueError:
        raise
    except Image.DecompressionBombError:
        raise InputError("decompression bomb") from None
    except (OSError, SyntaxError) as exc:
        raise InputError(f"not a decodable image ({type(exc).__name__})") from None


def cnn_pixels(source: str | Path | BinaryIO, pixels: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """The network's uint8 input of one image file or stream (an upload): decoded no larger than
    its resize needs, then ``pixels``; raises InputError when it is no readable image. The one
    decoding of the features step and of a query image, so a photo searched with gets the
    feature it would have been indexed with."""
    if isinstance(source, (str, Path)):
        return pixels(load_rgb(source, at_least=RESIZE))
    return pixels(decode_rgb(source, at_least=RESIZE))


def decode_pixels(path: str, pixels: Callable[[Image.Image], torch.Tensor]) -> tuple[torch.Tensor | None, str]:
    """(uint8 pixels, "") of one image file, or (None, why it cannot be read)."""
    try:
        return cnn_pixels(path, pixels), ""
    except ValueError as problem:
        return None, str(problem)


Batch = tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]


def decode_batch(paths: list[str], start: int, pixels: Callable[[Image.Image], torch.Tensor], pin: bool) -> Batch:
    """``(indices, uint8 pixels of the readable ones, [(index, reason)] of the others)`` of one batch.

    The pixels are ``[B, 3, H, W]`` in channels_last memory, as decoded images lie (each pixel's
    three values together) and as the network wants them: stacked as ``[B, 3, H, W]`` contiguous,
    the network's conversion back to channels_last cost 2.2 ms per 8 images on the CPU."""
    decoded = [(start + i, *decode_pixels(path, pixels)) for i, path in enumerate(paths)]
    good = [(i, x) for i, x, _ in decoded if x is not None]
    bad = [(i, reason) for i, x, reason in decoded if x is None]
    if not good:
        return [], None, bad
    stacked = torch.stack([x.permute(1, 2, 0) for _, x in good])  # [B, H, W, 3]
    if pin:
        stacked = stacked.pin_memory()
    return [i for i, _ in good], stacked.permute(0, 3, 1, 2), bad


def decoded_batches(
    paths: list[str], pixels: Callable[[Image.Image], torch.Tensor], batch_size: int, threads: int, pin: bool = False
) -> Iterator[Batch]:
    """The images' batches in order. ``threads == 0`` decodes each batch when it is asked for;
    otherwise decode threads run ahead by up to ``2 * threads`` batches. Threads, not processes:
    Pillow releases the GIL while it decodes, converts and resizes, and a thread has nothing to
    start, pickle or fork (the DataLoader worker processes this replaces reached a ninth of the
    threads' rate on a 16-core GPU host: :func:`decode_threads`)."""
    starts = range(0, len(paths), batch_size)
    if threads == 0:
        for start in starts:
            yield decode_batch(paths[start : start + batch_size], start, pixels, pin)
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="webvse-decode")
    try:
        ahead: deque[Future[Batch]] = deque()
        for start in starts:
            ahead.append(pool.submit(decode_batch, paths[start : start + batch_size], start, pixels, pin))
            if len(ahead) > 2 * threads:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()
    finally:  # the consumer stopped early (an error): drop what is queued
        pool.shutdown(wait=True, cancel_futures=True)


def decode_threads(device: torch.device) -> int:
    """How many threads decode images by default: none on the CPU, where the forward already uses every
    core and a decode thread only steals from it (2 cores: a thread prefetching the next batch took the
    step from 86 to 68 img/s); 4 on CUDA, where decoding is the limit. Measured on an H100's 16-core
    host, 6,144 JPEGs, batch 64, pinned: 4 threads 1.75-1.8k img/s, 8 threads 1.4k, 15 threads
    1.3-1.4k (the GIL-held parts of decoding contend); the DataLoader's worker processes, 4 / 8 / 15,
    194 / 86 / 42 img/s (one in-loop decoder: 590)."""
    return min(4, max(1, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 0


def forward_batch_size(device: torch.device) -> int:
    """Images per CNN forward by default. On the CPU a small batch: at 64 the activations of one
    layer (~50 MB) exceed what glibc's allocator keeps for reuse, so every layer of every batch
    maps fresh pages and the kernel zeroes them (2 cores, bf16, in a Prefect worker thread:
    53 img/s at 64, a third of the CPU time in the kernel; 83 img/s at 8; 63 at 4, where
    per-call overhead takes over). On CUDA a large one, to fill the GPU."""
    return 64 if device.type == "cuda" else 8


def features_id(encoder: str, device: str, precision: str) -> str:
    """The cache folder name of the features this encoder computes on this device at this precision."""
    return encoder_spec(encoder).features_id(use_bf16(precision, pick_device(device)))


def images_to_encode(root: DataRoot) -> pd.DataFrame:
    """``sha256, path`` of the clean images and the kept web photos (each image once)."""
    frames = []
    if root.clean_images.is_file():
        frames.append(read_table(root.clean_images, CLEAN_IMAGES)[["sha256", "path"]])
    if root.web_photos.is_file():
        web = read_table(root.web_photos, WEB_PHOTOS)
        web = web[(web["status"] == "kept") & (web["sha256"] != "")]
        frames.append(pd.DataFrame({"sha256": web["sha256"], "path": [str(root.root / p) for p in web["path"]]}))
    if not frames:
        raise MissingInputError(f"no images to encode under {root.root}: run the keywords (clean data) and crawl steps first")
    return pd.concat(frames, ignore_index=True).drop_duplicates("sha256")


def unreadable_images(root: DataRoot, encoder_id: str) -> set[str]:
    """sha256 of the images this encoder could not decode: they never get a feature row."""
    failures = root.feature_failures(encoder_id)
    return set(read_table(failures, FEATURE_FAILURES)["sha256"]) if failures.is_file() else set()


def report_unreadable(images: pd.DataFrame, failures_path: Path, on_bad_image: str, log: Callable[[str], None]) -> None:
    """Say which of ``images`` could not be decoded (by count and file); raise when asked to fail."""
    if not failures_path.is_file():
        return
    failures = read_table(failures_path, FEATURE_FAILURES)
    bad = failures[failures["sha256"].isin(images["sha256"])].drop_duplicates("sha256")
    if bad.empty:
        return
    listed = "; ".join(f"{path} ({reason})" for path, reason in zip(bad["path"].head(5), bad["reason"].head(5)))
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    message = f"{len(bad)} image(s) could not be read: {listed}{more} (all in {failures_path})"
    if on_bad_image == "fail":
        raise InputError(f"{message}; replace or remove them, or set features.on_bad_image: skip to train on the rest")
    log(f"features: WARNING {message}; they are left out of training and evaluation (features.on_bad_image: fail stops instead)")


def compute_features(
    root: DataRoot, images: pd.DataFrame, settings: FeatureSettings = FeatureSettings(), log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Encode the images that have no row yet; returns counts and throughput."""
    keep_freed_memory_for_reuse()  # activations are reused, not page-faulted in again every batch
    spec, net, _ = build_encoder(settings.encoder, settings.weights_path)
    device = pick_device(settings.device)
    bf16 = use_bf16(settings.precision, device)
    features_id = spec.features_id(bf16)
    folder = root.features_dir(features_id)
    schema = feature_schema(spec.dim)
    sweep_partial_writes(folder)  # a shard write cut short by a kill
    done = set(read_shards(folder, schema).column("sha256").to_pylist())
    failures_path = root.feature_failures(features_id)
    failed = unreadable_images(root, features_id)
    todo = images[~images["sha256"].isin(done | failed)].drop_duplicates("sha256").reset_index(drop=True)
    counts = {"images": len(images), "cached": len(images) - len(todo), "computed": 0, "failed": 0}
    if todo.empty:
        log(f"features: all {len(images)} images already encoded with {features_id}")
        report_unreadable(images, failures_path, settings.on_bad_image, log)
        return {**counts, "encoder_id": features_id, "seconds": 0.0, "images_per_second": 0.0}
    # channels_last on every device: 1.8x the NCHW forward in fp32 on the CPU, and what oneDNN's bf16 kernels want
    net = net.to(device).to(memory_format=torch.channels_last)
    threads = decode_threads(device) if settings.workers is None else settings.workers
    batches = decoded_batches(
        todo["path"].tolist(),
        spec.pixels(),
        settings.batch_size or forward_batch_size(device),
        threads,
        pin=device.type == "cuda",
    )
    started = next_report = time.perf_counter()
    pending_sha: list[str] = []
    pending_vec: list[np.ndarray] = []

    def flush() -> None:
        if pending_sha:
            append_shard(folder, pd.DataFrame({"sha256": pending_sha, "feature": list(np.concatenate(pending_vec))}), schema)
            pending_sha.clear()
            pending_vec.clear()

    with torch.inference_mode():
        for indices, batch, bad in batches:
            if bad:
                rows = pd.DataFrame([{"sha256": todo["sha256"][i], "path": todo["path"][i], "reason": r} for i, r in bad])
                append_rows(failures_path, rows, FEATURE_FAILURES)
                counts["failed"] += len(bad)
            if batch is None:
                continue
            pending_vec.append(cnn_features(net, batch, device, bf16).cpu().numpy())
            pending_sha.extend(todo["sha256"][i] for i in indices)
            counts["computed"] += len(indices)
            if len(pending_sha) >= settings.shard_rows:
                flush()
            if time.perf_counter() >= next_report:  # progress every ~10 s, whatever the batch size
                next_report = time.perf_counter() + PROGRESS_SECONDS
                log(f"features: {counts['computed'] + counts['failed']}/{len(todo)} images ({features_id}, {device})")
    flush()
    seconds = time.perf_counter() - started
    rate = counts["computed"] / seconds if seconds else 0.0
    log(
        f"features: {counts['computed']} computed, {counts['cached']} cached, {counts['failed']} failed in {seconds:.1f}s "
        f"({rate:.1f} img/s, {'bf16' if bf16 else 'fp32'}, decode threads: {threads})"
    )
    report_unreadable(images, failures_path, settings.on_bad_image, log)
    return {**counts, "encoder_id": features_id, "seconds": seconds, "images_per_second": rate}

"""The features step's settings and their defaults, declared once: read by the ``features``
section of the pipeline configuration (flags, schema, help) and by :func:`tasks.imaging.features.compute_features`.

No heavy imports beyond the encoder registry, so the configuration can read these cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from webvse_model.settings import DEFAULT_ENCODER


@dataclass(frozen=True)
class FeatureSettings:
    encoder: str = DEFAULT_ENCODER
    weights_path: str | None = None
    batch_size: int | None = None  # images per CNN forward; None = forward_batch_size(device)
    workers: int | None = None  # decode threads; None = decode_threads(device): 0 on the CPU, 4 on CUDA
    shard_rows: int = 512  # a shard is committed every ~512 images: an interrupted pass loses at most that much work
    device: str = "auto"
    on_bad_image: Literal["skip", "fail"] = (
        "skip"  # "fail": stop with the list of unreadable images instead of training without them
    )
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 where the hardware has it natively)

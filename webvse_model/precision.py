"""Which float format the CNN forward and the training steps run in: fp32 or bf16 autocast.

bf16 pays only where the hardware computes it natively; elsewhere oneDNN emulates it and it
is slower than fp32. Measured on the 2-core development machine (AMD EPYC with AVX-512 BF16,
no AMX), EfficientNet-Lite0, batch 64: fp32 NCHW 15.7 img/s, fp32 channels_last 28.3,
bf16 channels_last 79.6 (cosine to fp32 >= 0.9996); a Stage I step at the paper's sizes
429 ms fp32 -> 197 ms bf16 (the GRU gains 2.1x, the projections 1.5x). The issue's Xeons
with AMX-BF16 gained 2.7x on the same forward. So ``auto`` picks bf16 on a CPU that lists
``amx_bf16`` or ``avx512_bf16`` and on a CUDA device that supports it, fp32 otherwise.

Losses, metrics and the optimizer's master weights stay fp32 (autocast keeps parameters in
fp32 and the losses cast their inputs up). A bf16 feature is a different feature: the
features' cache folder names the precision (:func:`feature_precision_suffix`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from storage.errors import InputError
from webvse_model.settings import PRECISIONS

NATIVE_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor listed in a ``/proc/cpuinfo`` text."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@cache
def cpu_has_native_bf16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """True when this CPU computes bf16 natively (AMX or AVX-512 BF16); False when it cannot tell."""
    try:
        text = Path(cpuinfo_path).read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: never assume
        return False
    return bool(cpu_flags(text) & NATIVE_BF16_CPU_FLAGS)


def use_bf16(precision: str, device: torch.device) -> bool:
    """Resolve a precision setting for a device: ``fp32`` / ``bf16`` force it, ``auto`` asks the hardware."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def feature_precision_suffix(bf16: bool) -> str:
    """What a features' cache folder appends to the encoder id: fp32 features keep the plain id."""
    return "-bf16" if bf16 else ""

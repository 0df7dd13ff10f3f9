"""Which float format the CNN forward runs in (fp32 or bf16 autocast), and whether the training
branches are worth measuring in bf16 (:mod:`webvse_model.branch_precision` decides those).

The CNN: ``auto`` picks bf16 on a CPU with AMX-BF16 (``amx_bf16``; the issue's Xeons: 2.7x the
fp32 forward; 2 cores of an H100 host's Xeon: EfficientNet-Lite0 1.83x, ResNet-152 2.3x), fp32
everywhere else. Not on CUDA: on an H100 at batch 64 EfficientNet-Lite0 runs *slower* in bf16
(9.4k against 12.6k img/s; its depthwise convolutions gain nothing) and ResNet-152 gains 1.2x
(3.3k against 2.7k img/s), while the step end to end is bound by decoding (about 1.8k img/s on
that host's 16 cores), so fp32 costs nothing there and is exact. Not on AVX-512 BF16 alone:
measured on an Intel Xeon with AVX-512 BF16 and AMX hidden by its VM (2 cores, EfficientNet-Lite0 folded, batch 8, the allocator tuned), the fp32 channels_last forward runs at
135-140 img/s and bf16 at 115-117, and fp32 is exact. (An AMD EPYC with AVX-512 BF16 measured
bf16 2.3x faster in an earlier session, at batch 64 where the fp32 forward, with activations
twice the size, spent much of its time page-faulting; that gap was largely the allocator's.)
The rule is static, not measured, because it names the features' cache folder: a choice that
could flip between runs would split the cache.

Training: any native bf16 (``amx_bf16`` or ``avx512_bf16``) makes the branches worth measuring;
they train in bf16 only where measured faster. Losses, metrics and the optimizer's master
weights stay fp32. A bf16 feature is a different feature: the features' cache folder names the
precision (:func:`feature_precision_suffix`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from storage.errors import InputError
from webvse_model.settings import PRECISIONS

NATIVE_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
AMX_BF16_CPU_FLAGS = frozenset({"amx_bf16"})


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor listed in a ``/proc/cpuinfo`` text."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@cache
def _cpu_flags_of(cpuinfo_path: str) -> frozenset[str]:
    try:
        return cpu_flags(Path(cpuinfo_path).read_text(encoding="utf-8", errors="replace"))
    except OSError:  # not Linux: never assume
        return frozenset()


def cpu_has_native_bf16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """True when this CPU computes bf16 natively (AMX or AVX-512 BF16); False when it cannot tell."""
    return bool(_cpu_flags_of(cpuinfo_path) & NATIVE_BF16_CPU_FLAGS)


def cpu_has_amx_bf16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """True when this CPU lists AMX-BF16, where the CNN's bf16 forward beats fp32; False when it cannot tell."""
    return bool(_cpu_flags_of(cpuinfo_path) & AMX_BF16_CPU_FLAGS)


def use_bf16(precision: str, device: torch.device) -> bool:
    """Resolve a precision setting for the CNN on a device: ``fp32`` / ``bf16`` force it, ``auto`` asks the hardware."""
    check_precision(precision)
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cpu" and cpu_has_amx_bf16()


def bf16_native(device: torch.device) -> bool:
    """Whether this device computes bf16 natively at all (then training measures its branches)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def feature_precision_suffix(bf16: bool) -> str:
    """What a features' cache folder appends to the encoder id: fp32 features keep the plain id."""
    return "-bf16" if bf16 else ""

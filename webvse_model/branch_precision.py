"""Which branches of the joint embedding train under bf16 autocast: measured, not assumed.

A CPU that computes bf16 natively does not make every layer faster in bf16. Measured on two
2-core development machines (batch 128, forward + backward of one branch):

* AMD EPYC with AVX-512 BF16: a Stage I step at the paper's sizes 429 ms -> 197 ms; every
  branch gains (the GRU 2.1x, the projections 1.5x).
* Intel Xeon with AMX (2 of the GPU host's cores): paper sizes, image 2.05x, sentence 1.99x,
  tag 1.76x; a full step 268.5 ms fp32 -> 160.8 ms with every branch in bf16 (1.67x).
* Intel Xeon (family 6 model 207, AVX-512 BF16 and FP16, AMX not exposed to the VM): MKL's
  fp32 GEMM runs at 270-320 GFLOP/s on 2 threads and oneDNN's bf16 GEMM at ~160, so every
  branch is *slower* in bf16 — image 0.57x, tag 0.59x, sentence 0.73x at the paper's sizes,
  0.58x / 0.64x / 0.83x at the demo's — while the CNN's convolutions gain 1.8x there.

So ``precision: auto`` on such a CPU times each branch's forward and backward at the run's own
sizes and batch, in fp32 and in bf16 autocast, on a copy of the model (the model, its
gradients and the global RNG are untouched: a measured run trains exactly like an unmeasured
one in the precision it picks), and trains a branch in bf16 only where that is at least
``BF16_MIN_SPEEDUP`` faster. The margin keeps a near tie on fp32, the exact one, and keeps the
choice from flipping between runs on timing noise. ``fp32`` / ``bf16`` force every branch;
CUDA is measured the same way: on an H100 at the paper's sizes a whole fp32 step takes 11.6 ms
and an all-bf16 one 13.8–16.7 ms (at batch 128 the step is bound by kernel launches, and
autocast adds casts), so bf16 is not assumed there either.
A trainer records its choice in its checkpoint, so a resumed run keeps the precision it began
with. Losses, metrics and the optimizer stay fp32 whatever the branches run in.
"""

from __future__ import annotations

import copy
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from webvse_model.encoders import JointEmbedding
from webvse_model.precision import bf16_native, check_precision
from webvse_model.settings import BRANCHES

BF16_MIN_SPEEDUP = 1.1  # bf16 for a branch only when its forward + backward is at least this much faster
_MEASURE_SECONDS = 0.4  # per branch and precision; at least _MIN_REPS timed repetitions
_MIN_REPS, _WARMUP_REPS = 3, 2
_TYPICAL_CAPTION_TOKENS = 12


@dataclass(frozen=True)
class BranchPrecision:
    """The branches that run under bf16 autocast, and why (``speedups``: fp32 time / bf16 time, when measured)."""

    bf16: frozenset[str] = frozenset()
    reason: str = "fp32 forced"
    speedups: dict[str, float] = field(default_factory=dict, compare=False)

    def autocast(self, device: torch.device, branch: str) -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=branch in self.bf16)

    def describe(self) -> str:
        which = ", ".join(b for b in BRANCHES if b in self.bf16) or "no branch"
        measured = ", ".join(f"{b} {self.speedups[b]:.2f}x" for b in BRANCHES if b in self.speedups)
        return f"bf16 autocast for {which} ({self.reason}{'; bf16 vs fp32: ' + measured if measured else ''})"


def model_branches(model: JointEmbedding) -> tuple[str, ...]:
    return tuple(b for b in BRANCHES if getattr(model, b) is not None)


def choose_branch_precision(
    precision: str,
    model: JointEmbedding,
    batch_size: int,
    device: torch.device,
    measure: Callable[[JointEmbedding, int, torch.device], dict[str, float]] | None = None,
) -> BranchPrecision:
    """Resolve a precision setting for this model on this device (``measure``: how to time the
    branches, :func:`measure_bf16_speedups` unless given)."""
    branches = model_branches(model)
    check_precision(precision)
    if precision != "auto":
        return BranchPrecision(frozenset(branches) if precision == "bf16" else frozenset(), f"{precision} forced")
    if not bf16_native(device):
        return BranchPrecision(frozenset(), "no native bf16 on this device")
    speedups = (measure or measure_bf16_speedups)(model, batch_size, device)
    chosen = frozenset(b for b, gain in speedups.items() if gain >= BF16_MIN_SPEEDUP)
    return BranchPrecision(chosen, f"measured, bf16 where >= {BF16_MIN_SPEEDUP:.2f}x", speedups)


_measured: dict[tuple[object, ...], dict[str, float]] = {}
_MEASURING = threading.Lock()  # runs starting at once in threads: one measures, the others wait and reuse it


def measure_bf16_speedups(model: JointEmbedding, batch_size: int, device: torch.device) -> dict[str, float]:
    """fp32 time / bf16 time of each branch's forward + backward at these sizes (once per process and
    shape: runs that start side by side, with their share of the cores, reuse the first one's)."""
    key = (model.config, batch_size, str(device))
    with _MEASURING:
        if key not in _measured:
            _measured[key] = _time_branches(model, batch_size, device)
        return dict(_measured[key])


def _time_branches(model: JointEmbedding, batch_size: int, device: torch.device) -> dict[str, float]:
    probe = copy.deepcopy(model).to(device).train()
    config = probe.config
    generator = torch.Generator().manual_seed(0)  # synthetic inputs; the global RNG stays untouched
    b = max(2, batch_size)
    features = torch.rand(b, config.image_dim, generator=generator).to(device)
    tokens = torch.randint(1, max(2, config.vocab_size), (b, _TYPICAL_CAPTION_TOKENS), generator=generator).to(device)
    lengths = torch.randint(_TYPICAL_CAPTION_TOKENS // 2, _TYPICAL_CAPTION_TOKENS + 1, (b,), generator=generator)
    tag_vectors = torch.randn(b, max(1, config.tag_dim), generator=generator).to(device)
    inputs: dict[str, Callable[[], torch.Tensor]] = {
        "image": lambda: probe.encode_images(features),
        "sentence": lambda: probe.encode_captions(tokens, lengths),
        "tag": lambda: probe.encode_tags(tag_vectors),
    }
    speedups = {}
    for branch in model_branches(probe):
        seconds = {bf16: _median_seconds(inputs[branch], device, bf16) for bf16 in (False, True)}
        speedups[branch] = seconds[False] / seconds[True]
    return speedups


def _median_seconds(forward: Callable[[], torch.Tensor], device: torch.device, bf16: bool) -> float:
    def step() -> float:
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = forward()
        out.float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    for _ in range(_WARMUP_REPS):  # kernel selection and first allocations
        step()
    times = [step()]
    while len(times) < _MIN_REPS or sum(times) < _MEASURE_SECONDS:
        times.append(step())
        if len(times) >= 50:
            break
    return statistics.median(times)

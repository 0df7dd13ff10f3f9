"""The learning library's settings and their defaults, declared once and importable without torch.

The pipeline configuration (:mod:`tasks.pipeline_config`) builds its typed sections, flags
and schema from these, and ``webvse --help`` reads them; importing torch for that cost ~10 s,
so nothing here imports it. The modules that compute (``encoders``, ``train``, ``data``,
``cnn``, ``losses``, ``metrics``, ``precision``) take their settings from here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from storage.errors import InputError

LossVariant = Literal["vse", "vse++"]
LOSS_VARIANTS: tuple[LossVariant, ...] = ("vse", "vse++")

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")

PROTOCOLS: tuple[str, ...] = ("all", "coco-1k", "coco-5k", "f30k-1k")

# Pretrained CNNs by name: feature width and input normalisation (the builders live in ``cnn``).
ENCODER_SHAPES: dict[str, tuple[int, str]] = {
    "efficientnet-lite0": (1280, "tflite"),
    "resnet152": (2048, "imagenet"),
    "vgg19": (4096, "imagenet"),
}
DEFAULT_ENCODER = "efficientnet-lite0"

BRANCHES: tuple[str, ...] = ("image", "sentence", "tag")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the joint embedding; defaults follow the paper (D=1024, words 300)."""

    image_dim: int
    vocab_size: int
    tag_dim: int = 0
    embed_dim: int = 1024
    hidden_dim: int = 1024
    word_dim: int = 300
    gru_hidden: int = 1024
    gru_layers: int = 1

    def __post_init__(self) -> None:
        for name in ("image_dim", "vocab_size", "embed_dim", "hidden_dim", "word_dim", "gru_hidden", "gru_layers"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.tag_dim < 0:
            raise InputError(f"model.tag_dim must be >= 0 (0 = no tag branch), got {self.tag_dim}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CurriculumSchedule:
    """Which web pairs an epoch may draw from: frequent keywords first, rare ones later.

    Keywords are ranked by caption frequency (rank 1 = most frequent, the easiest
    concept). At epoch ``e`` the pool holds the pairs whose keyword rank lies in the
    first ``fraction(e)`` of all distinct ranks, where ``fraction`` grows linearly
    from ``start_fraction`` at epoch 0 to 1.0 at epoch ``full_at_epoch`` and stays
    there. ``enabled=False`` gives the no-curriculum ablation: every pair, every epoch.
    """

    enabled: bool = True
    start_fraction: float = 0.3
    full_at_epoch: int = 5

    def __post_init__(self) -> None:
        if not 0.0 < self.start_fraction <= 1.0:
            raise InputError(f"curriculum.start_fraction must be in (0, 1], got {self.start_fraction}")
        if self.full_at_epoch < 0:
            raise InputError(f"curriculum.full_at_epoch must be >= 0, got {self.full_at_epoch}")

    def fraction(self, epoch: int) -> float:
        if not self.enabled or self.full_at_epoch == 0:
            return 1.0
        step = (1.0 - self.start_fraction) * min(epoch, self.full_at_epoch) / self.full_at_epoch
        return self.start_fraction + step  # at most 1: step <= 1 - start_fraction

    def pool(self, keyword_rank: np.ndarray, epoch: int) -> np.ndarray:
        """Indices of the pairs allowed at ``epoch`` (never empty)."""
        ranks = np.unique(keyword_rank)
        keep = max(1, int(np.ceil(self.fraction(epoch) * len(ranks))))
        return np.flatnonzero(keyword_rank <= ranks[keep - 1])


class ConfigError(InputError):
    """A configuration value is out of range; the message names the field."""


@dataclass(frozen=True)
class StageConfig:
    """Hyper-parameters of one training stage (defaults: the paper's Stage I)."""

    name: str = "stage1"
    epochs: int = 30
    lr: float = 2e-4
    lr_decay_every: int = 10
    lr_decay: float = 0.1
    batch_size: int = 128
    grad_clip: float = 2.0
    loss: LossVariant = "vse++"
    margin: float = 0.2
    lambda_sentence: float = 1.0
    lambda_tag: float = 1.0
    seed: int = 0
    warmup_epochs: int = 0  # with vse++: first epochs on the sum of negatives, against early collapse on small data
    frozen: tuple[str, ...] = ()  # branches ("image", "sentence", "tag") whose weights this stage leaves as they are
    curriculum: CurriculumSchedule = field(default_factory=CurriculumSchedule)

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{self.name}.{name} {rule}, got {getattr(self, name)!r}")

        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.lr > 0 and math.isfinite(self.lr), "lr", "must be a positive number")
        need(self.lr_decay_every >= 1, "lr_decay_every", "must be >= 1")
        need(0 < self.lr_decay <= 1, "lr_decay", "must be in (0, 1]")
        need(self.batch_size >= 2, "batch_size", "must be >= 2 (a ranking loss needs negatives)")
        need(self.grad_clip > 0, "grad_clip", "must be > 0")
        need(self.loss in LOSS_VARIANTS, "loss", f"must be one of {LOSS_VARIANTS}")
        need(self.margin >= 0, "margin", "must be >= 0")
        need(self.lambda_sentence >= 0, "lambda_sentence", "must be >= 0")
        need(self.lambda_tag >= 0, "lambda_tag", "must be >= 0")
        need(self.lambda_sentence + self.lambda_tag > 0, "lambda_tag", "and lambda_sentence cannot both be 0")
        need(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        need(set(self.frozen) <= set(BRANCHES), "frozen", f"must name branches among {BRANCHES}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StageConfig:
        values = dict(values)
        if isinstance(values.get("frozen"), list):
            values["frozen"] = tuple(values["frozen"])
        if isinstance(values.get("curriculum"), dict):
            values["curriculum"] = CurriculumSchedule(**values["curriculum"])
        unknown = set(values) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ConfigError(f"{values.get('name', 'stage')}: unknown settings {sorted(unknown)}")
        return cls(**values)


STAGE2_EPOCHS = 10
STAGE2_LR_FACTOR = 0.1  # the paper: Stage II at a tenth of Stage I's learning rate


def stage2_defaults(
    stage1: StageConfig,
    epochs: int = STAGE2_EPOCHS,
    lr_factor: float = STAGE2_LR_FACTOR,
    curriculum: CurriculumSchedule | None = None,
) -> StageConfig:
    """The paper's Stage II: L_IT only, lr / 10, same loss, margin, clip and batch size.

    No warm-up: it guards a *randomly initialised* VSE++ model against collapse; Stage II starts
    from the trained Stage I model, where epochs on the sum of negatives would just be another loss.
    """
    return replace(
        stage1, name="stage2", epochs=epochs, lr=stage1.lr * lr_factor, lambda_sentence=0.0, lambda_tag=1.0, warmup_epochs=0,
        curriculum=curriculum or stage1.curriculum,
    )  # fmt: skip

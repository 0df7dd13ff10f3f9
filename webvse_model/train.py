"""The training loop for both stages, with exact resume.

* Stage I (``CaptionedImages``): ``lambda_sentence * L_IS + lambda_tag * L_IT`` on clean
  image-caption pairs, the tags being the nouns and verbs of the image's captions;
  ``lambda_tag = 0`` is the plain VSE / VSE++ baseline.
* Stage II (``WebPairs``): ``L_IT`` only on web image-tag pairs, from Stage I's best
  weights, at a tenth of the learning rate, drawing from a curriculum pool that grows
  from frequent to rare keywords.

Adam, step decay, gradient-norm clipping, validation (rsum on the clean validation
split) every epoch, the best model kept, and a ``last`` checkpoint after every epoch
holding everything needed to continue: model, optimizer, scheduler, epoch, best rsum,
history and RNG state. Batch order is a pure function of ``(seed, epoch)``, so a
resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from storage.checkpoints import CheckpointStore
from storage.errors import InputError
from webvse_model.allocator import keep_freed_memory_for_reuse
from webvse_model.branch_precision import BranchPrecision, choose_branch_precision
from webvse_model.data import CaptionedImages, WebPairs, batch_slices, caption_batch, epoch_order
from webvse_model.encoders import JointEmbedding
from webvse_model.inference import evaluate_split
from webvse_model.losses import ranking_loss
from webvse_model.settings import ConfigError, LossVariant, ModelConfig, StageConfig

CHECKPOINT_FORMAT = "webvse-checkpoint-1"


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch did; ``metrics`` are on the validation split (empty without one)."""

    stage: str
    epoch: int
    train_loss: float
    lr: float
    seconds: float
    metrics: dict[str, float]

    def to_row(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "lr": self.lr,
            "seconds": self.seconds,
            **self.metrics,
        }


@dataclass
class StageResult:
    stage: str
    history: list[EpochRecord]
    best_rsum: float
    best_epoch: int
    checkpoint_dir: Path


_ESTIMATE_AFTER_STEPS = 5  # steps timed (after the first) before the stage's duration is estimated


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` = CUDA when available, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available on this machine")
    return torch.device(name)


def _torch_save(obj: Any) -> Callable[[BinaryIO], None]:
    return lambda handle: torch.save(obj, handle)


def _torch_load(device: torch.device) -> Callable[[BinaryIO], Any]:
    return lambda handle: torch.load(handle, map_location=device, weights_only=True)


def save_model(store: CheckpointStore, name: str, model: JointEmbedding, meta: dict[str, Any]) -> None:
    """Weights and model config only: what inference needs."""
    payload = {"format": CHECKPOINT_FORMAT, "model_config": model.config.to_dict(), "model": model.state_dict(), "meta": meta}
    store.save(name, _torch_save(payload), meta)


def load_model(store: CheckpointStore, name: str = "best", device: torch.device | str = "cpu") -> JointEmbedding:
    """Rebuild a :class:`JointEmbedding` from a checkpoint (``weights_only=True``)."""
    payload = store.load(name, _torch_load(torch.device(device)))
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{store.folder / (name + '.pt')} is not a webvse checkpoint")
    model = JointEmbedding(ModelConfig(**payload["model_config"])).to(device)
    model.load_state_dict(payload["model"])
    return model


class Trainer:
    """Runs one stage on one model; checkpoints under ``checkpoint_dir``."""

    def __init__(
        self,
        model: JointEmbedding,
        config: StageConfig,
        checkpoint_dir: str | Path,
        device: torch.device,
        precision: str = "auto",
        on_epoch: Callable[[EpochRecord], None] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        keep_freed_memory_for_reuse()
        self.model = model.to(device)
        self.config = config
        self.device = device
        self.precision = precision  # per branch, resolved on first use (see branch_precision); losses and optimizer stay fp32
        self._branch_precision: BranchPrecision | None = None
        self.store = CheckpointStore(checkpoint_dir)
        self.on_epoch = on_epoch
        self.log = log
        self._epoch = 0
        self._estimated = False  # the duration estimate is said once, on the first epoch this trainer runs
        for branch in config.frozen:
            module = getattr(self.model, branch)
            if module is not None:
                module.requires_grad_(False)
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=config.lr_decay_every, gamma=config.lr_decay)

    @property
    def branch_precision(self) -> BranchPrecision:
        """Which branches run under bf16 autocast: the checkpoint's choice when resuming, else chosen now."""
        if self._branch_precision is None:
            self._branch_precision = choose_branch_precision(self.precision, self.model, self.config.batch_size, self.device)
        return self._branch_precision

    # ---------------------------------------------------------------- checkpoints
    def _state(self, next_epoch: int, best_rsum: float, best_epoch: int, history: list[EpochRecord]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model_config": self.model.config.to_dict(),
            "stage_config": _plain(self.config.to_dict()),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "next_epoch": next_epoch,
            "best_rsum": best_rsum,
            "best_epoch": best_epoch,
            "history": [asdict(r) for r in history],
            "bf16_branches": sorted(self.branch_precision.bf16),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def _restore(self) -> tuple[int, float, int, list[EpochRecord]]:
        state = self.store.load("last", _torch_load(self.device))
        if state.get("format") != CHECKPOINT_FORMAT:
            raise InputError(f"{self.store.folder}/last.pt is not a webvse training checkpoint")
        if state["model_config"] != self.model.config.to_dict():
            raise InputError(f"{self.store.folder}/last.pt was trained with another model shape: {state['model_config']}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        if "bf16_branches" in state:  # a resumed run keeps the precision it began with
            self._branch_precision = BranchPrecision(frozenset(state["bf16_branches"]), "as the run began")
        history = [EpochRecord(**r) for r in state["history"]]
        return int(state["next_epoch"]), float(state["best_rsum"]), int(state["best_epoch"]), history

    # ---------------------------------------------------------------- one epoch
    def _loss(self, images: torch.Tensor, texts: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        variant: LossVariant = "vse" if self._epoch < self.config.warmup_epochs else self.config.loss
        return ranking_loss(images.float(), texts.float(), ids, self.config.margin, variant)

    def _caption_step_loss(self, data: CaptionedImages, rows: np.ndarray) -> torch.Tensor:
        cfg = self.config
        autocast, device = self.branch_precision.autocast, self.device
        batch = caption_batch(data, rows, device)
        with autocast(device, "image"):
            images = self.model.encode_images(batch.features)
        loss = images.new_zeros((), dtype=torch.float32)
        if cfg.lambda_sentence > 0:
            with autocast(device, "sentence"):
                captions = self.model.encode_captions(batch.tokens, batch.lengths)
            loss = loss + cfg.lambda_sentence * self._loss(images, captions, batch.image_ids)
        if cfg.lambda_tag > 0 and batch.tag_vectors is not None and batch.has_tags is not None:
            mask = batch.has_tags
            if int(mask.sum()) >= 2:
                with autocast(device, "tag"):
                    tags = self.model.encode_tags(batch.tag_vectors[mask])
                loss = loss + cfg.lambda_tag * self._loss(images[mask], tags, batch.image_ids[mask])
        return loss

    def _web_step_loss(self, data: WebPairs, rows: np.ndarray) -> torch.Tensor:
        features = torch.from_numpy(data.features[rows]).to(self.device, non_blocking=True)
        tag_vectors = torch.from_numpy(data.tag_vectors[rows]).to(self.device, non_blocking=True)
        ids = torch.from_numpy(rows).to(self.device)
        with self.branch_precision.autocast(self.device, "image"):
            images = self.model.encode_images(features)
        with self.branch_precision.autocast(self.device, "tag"):
            tags = self.model.encode_tags(tag_vectors)
        return self.config.lambda_tag * self._loss(images, tags, ids)

    def _epoch_batches(self, train: CaptionedImages | WebPairs, epoch: int) -> list[np.ndarray]:
        cfg = self.config
        if isinstance(train, WebPairs):
            pool = cfg.curriculum.pool(train.keyword_rank, epoch)
            order = pool[epoch_order(len(pool), cfg.seed, epoch)]
        else:
            order = epoch_order(train.num_captions, cfg.seed, epoch)
        return list(batch_slices(order, cfg.batch_size))

    def _train_epoch(self, train: CaptionedImages | WebPairs, epoch: int) -> float:
        self._epoch = epoch
        self.model.train()
        batches = self._epoch_batches(train, epoch)
        if not batches:
            raise InputError(f"{self.config.name}: the training set yields no batch of >= 2 pairs")
        total = 0.0
        params = [p for p in self.model.parameters() if p.requires_grad]
        started = time.perf_counter()
        for step, rows in enumerate(batches, start=1):
            if step == 2:  # the first step pays one-off costs (allocations, kernel selection): not timed
                started = time.perf_counter()
            if step == _ESTIMATE_AFTER_STEPS + 2 and not self._estimated:
                self._log_estimate((time.perf_counter() - started) / _ESTIMATE_AFTER_STEPS, len(batches), epoch)
            if isinstance(train, WebPairs):
                loss = self._web_step_loss(train, rows)
            else:
                loss = self._caption_step_loss(train, rows)
            self.optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
                self.optimizer.step()
            total += float(loss.detach())
        if not math.isfinite(total):
            raise FloatingPointError(f"{self.config.name}: the training loss became {total} at epoch {epoch + 1}")
        return total / len(batches)

    def _log_estimate(self, seconds_per_step: float, steps_per_epoch: int, epoch: int) -> None:
        """Say how long the stage will take, measured on its first steps, before the user waits for it."""
        self._estimated = True
        epochs = self.config.epochs - epoch
        total = seconds_per_step * steps_per_epoch * epochs
        hint = " (fewer train.epochs, a smaller model or device=cuda shorten it)" if total > 15 * 60 else ""
        self.log(
            f"{self.config.name}: about {_duration(total)} of training for {epochs} epoch(s) on {self.device} "
            f"({seconds_per_step:.2f} s/step x {steps_per_epoch} steps/epoch, validation not counted){hint}"
        )

    # ---------------------------------------------------------------- the stage
    def fit(
        self,
        train: CaptionedImages | WebPairs,
        val: CaptionedImages | None,
        captions_per_image: int = 5,
        resume: bool = True,
    ) -> StageResult:
        """Train for ``config.epochs`` epochs (continuing from ``last`` if ``resume``)."""
        cfg = self.config
        if isinstance(train, WebPairs) and self.model.tag is None:
            raise ConfigError(f"{cfg.name}: web pairs need a tag branch (model.tag_dim > 0)")
        if isinstance(train, WebPairs) and cfg.lambda_tag <= 0:
            raise ConfigError(f"{cfg.name}.lambda_tag must be > 0 on web pairs (Stage II trains L_IT only)")
        if isinstance(train, CaptionedImages) and cfg.lambda_sentence <= 0 and train.tag_vectors is None:
            raise ConfigError(f"{cfg.name}: lambda_sentence = 0 and no tag vectors leaves nothing to train")
        if isinstance(train, CaptionedImages) and cfg.lambda_tag > 0 and train.tag_vectors is None:
            self.log(f"{cfg.name}: no tag vectors in the training data; training L_IS only (the baseline)")
            cfg = self.config = replace(cfg, lambda_tag=0.0)
        if val is not None:
            val.check_grouped(captions_per_image)

        start_epoch, best_rsum, best_epoch = 0, -math.inf, 0
        history: list[EpochRecord] = []
        for orphan in self.store.sweep_orphans():
            self.log(f"{cfg.name}: removed {orphan.name}, left by an interrupted write")
        if resume and self.store.has("last"):
            start_epoch, best_rsum, best_epoch, history = self._restore()
            if start_epoch >= cfg.epochs:
                self.log(f"{cfg.name}: already trained ({cfg.epochs}/{cfg.epochs} epochs, best rsum {best_rsum:.2f})")
            else:
                self.log(f"{cfg.name}: resuming at epoch {start_epoch + 1}/{cfg.epochs} (best rsum {best_rsum:.2f})")
            if self.on_epoch is not None:  # the checkpoint's history is authoritative: replay it
                for record in history:
                    self.on_epoch(record)
        if start_epoch < cfg.epochs:
            self.log(f"{cfg.name}: {self.branch_precision.describe()}")

        for epoch in range(start_epoch, cfg.epochs):
            started = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            loss = self._train_epoch(train, epoch)
            self.scheduler.step()
            metrics: dict[str, float] = {}
            if val is not None:
                metrics = evaluate_split(self.model, val, captions_per_image).to_dict()
            rsum = metrics.get("rsum", -loss)  # without validation, the lowest loss is "best"
            record = EpochRecord(cfg.name, epoch + 1, loss, lr, time.perf_counter() - started, metrics)
            history.append(record)
            if rsum > best_rsum:
                best_rsum, best_epoch = rsum, epoch + 1
                save_model(self.store, "best", self.model, {"epoch": epoch + 1, "rsum": rsum, "stage": cfg.name})
            self.store.save("last", _torch_save(self._state(epoch + 1, best_rsum, best_epoch, history)), {"epoch": epoch + 1})
            self.log(
                f"{cfg.name} epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f} lr {lr:.2g} "
                + (f"val rsum {metrics['rsum']:.2f} " if metrics else "")
                + f"({record.seconds:.1f}s)"
            )
            if self.on_epoch is not None:
                self.on_epoch(record)
        return StageResult(cfg.name, history, best_rsum, best_epoch, self.store.folder)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _plain(value: Any) -> Any:
    """Config dicts as plain Python values, loadable with ``weights_only=True``."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

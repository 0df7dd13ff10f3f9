"""Training runs: precomputed features -> a run folder with checkpoints and metrics.

Plain functions; the ``stage1`` / ``stage2`` steps (:mod:`tasks.steps.training`) call them. A *run* is a
folder under ``<data root>/runs/<run_id>/`` holding ``config.json`` (everything needed
to rebuild the data and model), ``vocab.json``, ``stage1/`` and ``stage2/`` checkpoints
and ``metrics.parquet`` (one row per epoch, rewritten atomically after each epoch so a
crash loses nothing already reported).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from storage.atomic import atomic_write_text
from storage.checkpoints import CheckpointStore
from storage.errors import InputError, MissingInputError
from storage.layout import CONFIG_FILE, METRICS_FILE, VOCAB_FILE
from storage.tables import RUN_METRICS, read_table, write_table
from tasks.data.training_data import DataSource, load_split, load_web, read_split
from tasks.pipeline_config import TrainConfig
from webvse_model.encoders import seeded_model
from webvse_model.settings import ConfigError, CurriculumSchedule, ModelConfig, StageConfig, stage2_defaults
from webvse_model.text import Vocabulary, tokenize
from webvse_model.train import EpochRecord, StageResult, Trainer, load_model, pick_device


@dataclass(frozen=True)
class RunSettings:
    """Everything a training run needs besides the data."""

    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig | None = None
    embed_dim: int = ModelConfig.embed_dim
    hidden_dim: int = ModelConfig.hidden_dim
    word_dim: int = ModelConfig.word_dim
    gru_hidden: int = ModelConfig.gru_hidden
    vocab_min_count: int = 4
    device: str = "auto"
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 autocast where the hardware has it natively)
    web_fraction: float = 1.0  # share of the kept web photos Stage II trains on (a nested subset by content)


def write_run_config(
    run_dir: Path, source: DataSource, settings: RunSettings, model: ModelConfig, stage2_from: Path | None = None
) -> None:
    """``config.json``; the data path is stored relative to the run when the run lives inside it
    (a data root's own runs), so a copied or moved data root reads its own data, not the original's.
    ``stage2_from``: the run whose model Stage II continued (the nightly cycle), else absent."""
    data = asdict(source)
    if _inside(run_dir, Path(source.path)):
        data["path"] = os.path.relpath(Path(source.path).absolute(), run_dir.absolute())
    config: dict[str, Any] = {"data": data, "settings": asdict(settings), "model": model.to_dict()}
    if stage2_from is not None:
        config["stage2_from"] = os.path.relpath(stage2_from.absolute(), run_dir.absolute())
    atomic_write_text(run_dir / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True))


def _inside(path: Path, folder: Path) -> bool:
    return path.absolute().is_relative_to(folder.absolute())


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """A run's ``config.json`` with its data path made absolute (relative paths are the run's)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise MissingInputError(f"{run_dir} is not a run folder: {CONFIG_FILE} is missing")
    config = json.loads(path.read_text(encoding="utf-8"))
    config["data"]["path"] = os.path.normpath(Path(run_dir).absolute() / config["data"]["path"])
    return dict(config)


class MetricsWriter:
    """Keeps ``metrics.parquet`` equal to the run's full epoch history."""

    def __init__(self, run_dir: Path, keep_existing: bool) -> None:
        self.path = run_dir / METRICS_FILE
        self.rows: list[dict[str, Any]] = []
        if keep_existing and self.path.is_file():
            self.rows = read_table(self.path, RUN_METRICS).to_dict("records")

    def __call__(self, record: EpochRecord) -> None:
        self.rows = [r for r in self.rows if not (r["stage"] == record.stage and r["epoch"] == record.epoch)]
        self.rows.append(record.to_row())
        frame = pd.DataFrame(self.rows).reindex(columns=RUN_METRICS.columns)
        write_table(self.path, frame, RUN_METRICS)


def train_run(
    run_dir: str | Path,
    source: DataSource,
    settings: RunSettings = RunSettings(),
    resume: bool = True,
    log: Callable[[str], None] = print,
    stage2_from: Path | None = None,
    between_epochs: Callable[[], None] | None = None,
) -> dict[str, StageResult]:
    """Stage I (and Stage II if configured and the source has web pairs) into ``run_dir``.

    Stage II starts from Stage I's best model, or from the final model of the run
    ``stage2_from`` (the model in use, continued by the nightly cycle; same Stage I).
    ``between_epochs`` is called in the training thread before the first epoch and after each one."""
    run = Path(run_dir)
    device = pick_device(settings.device)
    vocab_path = run / VOCAB_FILE
    raw_train = read_split(source, source.train_split, grouped=False)  # read once: the vocabulary and the arrays
    if resume and vocab_path.is_file():
        vocab = Vocabulary.load(vocab_path)
    else:
        vocab = Vocabulary.build((tokenize(c) for c in raw_train.captions), settings.vocab_min_count)
    train = load_split(source, source.train_split, vocab, grouped=False, log=log, raw=raw_train)
    val = load_split(source, source.val_split, vocab, log=log)
    web = load_web(source, settings.web_fraction) if settings.stage2 is not None else None
    if settings.stage2 is not None and web is None:
        raise ConfigError(
            f"stage2 is configured but {source.path} has no web pairs (web_ims.npy, web_tags.npy, web_keyword_rank.npy)"
        )
    if val.feature_dim != train.feature_dim or (web is not None and web.features.shape[1] != train.feature_dim):
        raise InputError(f"{source.path}: splits have different feature dimensions")
    tag_dim = train.tag_dim or (web.tag_vectors.shape[1] if web is not None else 0)
    model_config = ModelConfig(
        image_dim=train.feature_dim,
        vocab_size=len(vocab),
        tag_dim=tag_dim,
        embed_dim=settings.embed_dim,
        hidden_dim=settings.hidden_dim,
        word_dim=settings.word_dim,
        gru_hidden=settings.gru_hidden,
    )
    run.mkdir(parents=True, exist_ok=True)  # only once the data is known to load: a failed start leaves no empty run folder
    if not vocab_path.is_file():
        vocab.save(vocab_path)
    write_run_config(run, source, settings, model_config, stage2_from)
    log(
        f"run {run.name}: {train.num_images} train images / {train.num_captions} captions, vocab {len(vocab)}, "
        f"features {train.feature_dim}-d, tags {tag_dim}-d ({train.images_without_tags} images without tags), device {device}"
    )
    writer = MetricsWriter(run, keep_existing=resume)
    between = between_epochs or (lambda: None)

    def metrics(record: EpochRecord) -> None:
        writer(record)
        between()

    model = seeded_model(model_config, settings.stage1.seed)  # the initial weights are part of the experiment
    results: dict[str, StageResult] = {}
    between()
    stage1 = Trainer(model, settings.stage1, run / "stage1", device, settings.precision, metrics, log)
    results["stage1"] = stage1.fit(train, val, source.captions_per_image, resume)
    if settings.stage2 is not None and web is not None:
        start = final_stage_store(stage2_from) if stage2_from is not None else stage1.store
        best = load_model(start, "best", device)
        if best.config != model_config:
            raise InputError(f"{start.folder} has another model shape than this run's ({best.config} vs {model_config})")
        stage2 = Trainer(best, settings.stage2, run / "stage2", device, settings.precision, metrics, log)
        results["stage2"] = stage2.fit(web, val, source.captions_per_image, resume)
    return results


def final_stage_store(run: str | Path) -> CheckpointStore:
    """The checkpoints of a run's last trained stage (Stage II if it has one): its model."""
    stores = [CheckpointStore(Path(run) / stage) for stage in ("stage2", "stage1")]
    found = next((store for store in stores if store.has("best")), None)
    if found is None:
        raise MissingInputError(f"{run} has no trained stage (no stage1/ or stage2/ best checkpoint)")
    return found


# ------------------------------------------------------------------ from the pipeline configuration
def run_settings(train: TrainConfig, device: str, lambda_tag: float | None = None, precision: str = "auto") -> RunSettings:
    """The one place the pipeline's ``train`` section becomes the trainer's settings: Stage I,
    Stage II and the model sizes. ``lambda_tag=0`` = the baseline."""
    stage1 = StageConfig(
        epochs=train.epochs, lr=train.lr, lr_decay_every=train.lr_decay_every, lr_decay=train.lr_decay, batch_size=train.batch_size,
        grad_clip=train.grad_clip, loss=train.loss, margin=train.margin, lambda_tag=train.lambda_tag if lambda_tag is None else lambda_tag,
        seed=train.seed, warmup_epochs=train.warmup_epochs,
    )  # fmt: skip
    curriculum = CurriculumSchedule(train.curriculum, train.curriculum_start, train.curriculum_full_at_epoch)
    stage2 = stage2_defaults(stage1, train.stage2_epochs, train.stage2_lr_factor, curriculum) if train.stage2_epochs else None
    return RunSettings(
        stage1, stage2, train.embed_dim, train.hidden_dim, train.word_dim, train.gru_hidden,
        device=device, precision=precision, web_fraction=train.web_fraction,
    )  # fmt: skip

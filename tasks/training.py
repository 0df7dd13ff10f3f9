"""Training step: precomputed features -> a run folder with checkpoints and metrics.

Plain functions (the Prefect ``@task`` wrappers arrive with the flow). A *run* is a
folder under ``<data root>/runs/<run_id>/`` holding ``config.json`` (everything needed
to rebuild the data and model), ``vocab.json``, ``stage1/`` and ``stage2/`` checkpoints
and ``metrics.parquet`` (one row per epoch, rewritten atomically after each epoch so a
crash loses nothing already reported).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from storage.atomic import atomic_write_text
from storage.tables import RUN_METRICS, read_table, write_table
from tasks.training_data import DataSource, load_split, load_web, read_split
from webvse_model.data import CurriculumSchedule
from webvse_model.encoders import JointEmbedding, ModelConfig
from webvse_model.text import Vocabulary, tokenize
from webvse_model.train import (
    ConfigError,
    EpochRecord,
    StageConfig,
    StageResult,
    Trainer,
    load_model,
    pick_device,
    stage2_defaults,
)

CONFIG_FILE, VOCAB_FILE, METRICS_FILE = "config.json", "vocab.json", "metrics.parquet"


@dataclass(frozen=True)
class RunSettings:
    """Everything a training run needs besides the data."""

    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig | None = None
    embed_dim: int = 1024
    hidden_dim: int = 1024
    word_dim: int = 300
    gru_hidden: int = 1024
    vocab_min_count: int = 4
    device: str = "auto"
    amp: bool = True


def write_run_config(run_dir: Path, source: DataSource, settings: RunSettings, model: ModelConfig) -> None:
    config = {"data": asdict(source), "settings": asdict(settings), "model": model.to_dict()}
    atomic_write_text(run_dir / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True))


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: {CONFIG_FILE} is missing")
    return json.loads(path.read_text(encoding="utf-8"))


def _stage_from(values: dict[str, Any] | None) -> StageConfig | None:
    return None if values is None else StageConfig.from_dict(values)


def settings_from_dict(values: dict[str, Any]) -> RunSettings:
    values = dict(values)
    values["stage1"] = _stage_from(values["stage1"])
    values["stage2"] = _stage_from(values.get("stage2"))
    return RunSettings(**values)


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
) -> dict[str, StageResult]:
    """Stage I (and Stage II if configured and the source has web pairs) into ``run_dir``."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    device = pick_device(settings.device)
    vocab_path = run / VOCAB_FILE
    if resume and vocab_path.is_file():
        vocab = Vocabulary.load(vocab_path)
    else:
        train_caps = read_split(source, source.train_split, grouped=False).captions
        vocab = Vocabulary.build((tokenize(c) for c in train_caps), settings.vocab_min_count)
        vocab.save(vocab_path)
    train = load_split(source, source.train_split, vocab, grouped=False)
    val = load_split(source, source.val_split, vocab)
    web = load_web(source) if settings.stage2 is not None else None
    if settings.stage2 is not None and web is None:
        raise ConfigError(f"stage2 is configured but {source.path} has no web pairs (web_ims.npy, web_tags.npy, web_keyword_rank.npy)")
    if val.feature_dim != train.feature_dim or (web is not None and web.features.shape[1] != train.feature_dim):
        raise ValueError(f"{source.path}: splits have different feature dimensions")
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
    write_run_config(run, source, settings, model_config)
    log(
        f"run {run.name}: {train.num_images} train images / {train.num_captions} captions, vocab {len(vocab)}, "
        f"features {train.feature_dim}-d, tags {tag_dim}-d ({train.images_without_tags} images without tags), device {device}"
    )
    metrics = MetricsWriter(run, keep_existing=resume)
    torch.manual_seed(settings.stage1.seed)  # the initial weights are part of the experiment
    model = JointEmbedding(model_config)
    results: dict[str, StageResult] = {}
    stage1 = Trainer(model, settings.stage1, run / "stage1", device, settings.amp, metrics, log)
    results["stage1"] = stage1.fit(train, val, source.captions_per_image, resume)
    if settings.stage2 is not None and web is not None:
        best = load_model(stage1.store, "best", device)
        stage2 = Trainer(best, settings.stage2, run / "stage2", device, settings.amp, metrics, log)
        results["stage2"] = stage2.fit(web, val, source.captions_per_image, resume)
    return results


def default_stage2(stage1: StageConfig, epochs: int, curriculum: bool = True) -> StageConfig:
    """The paper's Stage II settings derived from Stage I's (lr / 10, L_IT only)."""
    stage2 = stage2_defaults(stage1, epochs)
    if not curriculum:
        return StageConfig.from_dict({**asdict(stage2), "curriculum": asdict(CurriculumSchedule(enabled=False))})
    return stage2

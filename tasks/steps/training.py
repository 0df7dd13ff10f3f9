"""The Stage I and Stage II steps: each trains into a run folder named by its data and settings
(:mod:`tasks.training.runs`), so a retry resumes it and anything else starts a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from storage.checkpoints import MANIFEST_NAME
from storage.fingerprint import fingerprint
from storage.layout import VECTORS_FILE
from tasks.data.training_data import DataSource
from tasks.orchestration import attempt_number, pipeline_task, root_of, step_logger
from tasks.training.core_share import training_cores
from tasks.training.runs import RunSettings, final_stage_store, train_run
from webvse_model.train import StageResult


def _training_reads(inputs: dict[str, Any]) -> list[Path]:
    """Stage I reads the clean data only: its features are named by the clean images' content
    and the encoder (the features folder also grows with every crawl, which must not retrain
    Stage I); Stage II also reads the crawl, the features folder and the model it starts from."""
    root, source = root_of(inputs), inputs["source"]
    if source.kind == "precomp":
        return [Path(source.path)]
    paths = [root.clean_images, root.clean_captions, root.feature_failures(source.feature_model), root.vectors_dir / VECTORS_FILE]
    if "stage1_run" in inputs:
        paths += [
            root.web_photos,
            root.features_dir(source.feature_model),
            Path(inputs["stage1_run"]) / "stage1" / MANIFEST_NAME,
        ]
    if inputs.get("start_from"):
        paths += [final_stage_store(inputs["start_from"]).folder / MANIFEST_NAME]
    return paths


def _run_id(label: str, inputs: dict[str, Any]) -> str:
    """Same data + settings -> same folder (a retry resumes it); anything else -> a new one."""
    described = json.dumps({k: repr(v) for k, v in sorted(inputs.items())}, sort_keys=True)
    data = fingerprint(_training_reads(inputs))
    return f"{label}-{hashlib.sha256((described + data).encode()).hexdigest()[:10]}"


def _stage1_dir(inputs: dict[str, Any]) -> Path:
    stage1_only = replace(inputs["settings"], stage2=None, web_fraction=1.0)  # what Stage II trains on does not name Stage I
    keyed = {"source": inputs["source"], "settings": stage1_only, "root": inputs["root"]}
    return root_of(inputs).run_dir(_run_id(inputs["label"], keyed))


def _stage2_dir(inputs: dict[str, Any]) -> Path:
    keyed = {k: inputs[k] for k in ("source", "settings", "root", "stage1_run")}
    if inputs.get("start_from"):
        keyed["start_from"] = inputs["start_from"]
    return root_of(inputs).run_dir(_run_id(inputs["label"], keyed))


def _start_over(run: Path, fresh: bool) -> None:
    if fresh and attempt_number() == 1 and run.exists():  # a retry of a fresh run resumes what it started
        shutil.rmtree(run)


def _summary(run: Path, result: StageResult) -> dict[str, Any]:
    return {"run_dir": str(run), "best_rsum": result.best_rsum, "best_epoch": result.best_epoch}


_TRAINING_MODULES = ("tasks.steps.training", "tasks.training.runs", "tasks.data.training_data", "webvse_model")


def _stage_outputs(run: Path, stage: str) -> list[Path]:
    """A stage's outputs: its checkpoint manifest (sha256 of every checkpoint). Not the run
    folder: the evaluation adds plots and tables there without changing what was trained."""
    return [run / stage / MANIFEST_NAME]


@pipeline_task(
    "stage1",
    _TRAINING_MODULES,
    reads=_training_reads,
    writes=lambda i: _stage_outputs(_stage1_dir(i), "stage1"),
    run_name="stage1-{label}",
)
def stage1_step(root: str, source: DataSource, settings: RunSettings, label: str, fresh: bool = False) -> dict[str, Any]:
    """Stage I (image-sentence + image-tag losses; ``lambda_tag=0`` = the baseline) into its run folder."""
    run = _stage1_dir({"root": root, "source": source, "settings": settings, "label": label})
    _start_over(run, fresh)
    with training_cores().member() as cores:  # Stage I runs may train at once: each on its share of the CPU
        results = train_run(
            run, source, replace(settings, stage2=None), resume=True, log=step_logger(), between_epochs=cores.rebalance
        )
    return _summary(run, results["stage1"])


def _fork(stage1_run: Path, run: Path) -> None:
    """A Stage II run starts as a copy of its Stage I run (hard links: checkpoints are never rewritten in place)."""
    if (run / "stage1").is_dir():
        return
    staging = run.with_name(f".{run.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(
        stage1_run, staging, copy_function=_link_or_copy, ignore=shutil.ignore_patterns("stage2", "evaluation*", "*.png")
    )
    staging.rename(run)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@pipeline_task(
    "stage2",
    _TRAINING_MODULES,
    reads=_training_reads,
    writes=lambda i: _stage_outputs(_stage2_dir(i), "stage2"),
    run_name="stage2-{label}",
)
def stage2_step(
    root: str,
    stage1_run: str,
    source: DataSource,
    settings: RunSettings,
    label: str,
    start_from: str | None = None,
    fresh: bool = False,
) -> dict[str, Any]:
    """Stage II on the crawled web pairs (L_IT only, lr / 10, curriculum) from Stage I's best model,
    or continuing the model of run ``start_from`` (the model in use) where it shares this Stage I."""
    run = _stage2_dir(
        {"source": source, "settings": settings, "root": root, "stage1_run": stage1_run, "label": label, "start_from": start_from}
    )
    log = step_logger()
    _start_over(run, fresh)
    _fork(Path(stage1_run), run)
    origin = continuable(Path(start_from), Path(stage1_run), log) if start_from else None
    results = train_run(run, source, settings, resume=True, log=log, stage2_from=origin)
    return _summary(run, results["stage2"])


def continuable(model_run: Path, stage1_run: Path, log: Callable[[str], None]) -> Path | None:
    """``model_run`` if its Stage I is ``stage1_run``'s (the same checkpoints), else None and why.

    A model can only be continued on the data and word space it was trained in: after the
    clean data, Stage I's settings or the word vectors change, Stage I is trained anew and
    Stage II starts from it."""
    same = (model_run / "stage1" / MANIFEST_NAME).read_bytes() == (stage1_run / "stage1" / MANIFEST_NAME).read_bytes()
    if same:
        log(f"stage2: continuing the model in use ({model_run.name})")
        return model_run
    log(f"stage2: the model in use ({model_run.name}) was trained on another Stage I; starting from {stage1_run.name}'s Stage I")
    return None

"""Evaluation: a run's best checkpoints on a test split -> a metrics table.

Every stage that has a ``best`` checkpoint is evaluated on the same split and protocol,
so Stage I and Stage II sit side by side; the table is written to
``<run>/evaluation.parquet`` and returned.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from storage.atomic import atomic_write_text
from storage.checkpoints import CheckpointStore
from storage.errors import MissingInputError
from storage.layout import EVALUATION_FILE, METRICS_FILE, REPORT_DIR, VOCAB_FILE, DataRoot
from storage.tables import CLEAN_IMAGES, RUN_EVALUATION, RUN_METRICS, read_table, write_table
from tasks.data.training_data import DataSource, load_split, read_split
from tasks.imaging.features import unreadable_images
from tasks.pipeline_config import EvaluateConfig
from tasks.reporting.plots import RankedQueries, plot_recall_curves, plot_training, retrieval_examples
from tasks.training.model_registry import model_in_use
from tasks.training.runs import read_run_config
from webvse_model.data import CaptionedImages
from webvse_model.inference import embed_split
from webvse_model.metrics import retrieval_ranks, run_protocol
from webvse_model.text import Vocabulary
from webvse_model.train import load_model, pick_device

STAGES = ("stage1", "stage2")


@dataclass(frozen=True)
class EmbeddedSplit:
    """One trained stage's embeddings of a split, with what is needed to show them."""

    stage: str
    images: torch.Tensor
    captions: torch.Tensor
    data: CaptionedImages
    captions_per_image: int


def run_source(run_dir: Path) -> DataSource:
    return DataSource(**read_run_config(run_dir)["data"])


def embedded_stages(run_dir: str | Path, split: str | None = None, device: str = "auto") -> Iterator[EmbeddedSplit]:
    """Each trained stage of a run (its ``best`` checkpoint) applied to ``split``."""
    run = Path(run_dir)
    source = run_source(run)
    data = load_split(source, split or source.test_split, Vocabulary.load(run / VOCAB_FILE))
    data.check_grouped(source.captions_per_image)
    dev = pick_device(device)
    found = False
    for stage in STAGES:
        store = CheckpointStore(run / stage)
        if store.has("best"):
            found = True
            images, captions = embed_split(load_model(store, "best", dev), data, dev)
            yield EmbeddedSplit(stage, images, captions, data, source.captions_per_image)
    if not found:
        raise MissingInputError(f"{run} has no trained stage (no stage1/ or stage2/ best checkpoint)")


def evaluate_run(
    run_dir: str | Path,
    split: str | None = None,
    protocol: str = "all",
    device: str = "auto",
    also: Callable[[EmbeddedSplit], None] | None = None,
) -> pd.DataFrame:
    """Metrics of each trained stage of ``run_dir`` on ``split`` (default: the test split);
    ``also`` sees each stage's embeddings (for plots and examples) without embedding twice."""
    run = Path(run_dir)
    split = split or run_source(run).test_split
    rows = []
    for embedded in embedded_stages(run, split, device):
        if also is not None:
            also(embedded)
        result = run_protocol(protocol, embedded.images, embedded.captions, embedded.captions_per_image)
        rows.append({"stage": embedded.stage, "split": split, "protocol": protocol, **result.metrics.to_dict()})
    table = pd.DataFrame(rows).reindex(columns=RUN_EVALUATION.columns)
    write_table(run / EVALUATION_FILE, table, RUN_EVALUATION)
    return table


def format_table(table: pd.DataFrame, label_column: str = "stage") -> str:
    """A fixed-width results table: R@1/5/10 and medr both ways, and rsum."""
    head = f"{'':<22}{'image->text':^28}{'text->image':^28}"
    cols = f"{label_column:<22}" + "".join(f"{c:>7}" for c in ("R@1", "R@5", "R@10", "medr") * 2) + f"{'rsum':>8}"
    lines = [head, cols]
    for _, row in table.iterrows():
        values = [row[f"{d}_{m}"] for d in ("i2t", "t2i") for m in ("r1", "r5", "r10", "medr")]
        lines.append(f"{str(row[label_column]):<22}" + "".join(f"{v:>7.1f}" for v in values) + f"{row['rsum']:>8.1f}")
    return "\n".join(lines)


def stack_runs(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One table from several runs' evaluations, labelled ``<run label>/<stage>``."""
    labelled = [t.assign(variant=[f"{label}/{stage}" for stage in t["stage"]]) for label, t in tables.items()]
    return pd.concat(labelled, ignore_index=True)


# ------------------------------------------------------------------ the report
def image_names(source: DataSource, split: str) -> list[str]:
    """The split's image files in evaluation order (numbers for a precomp folder, which has none)."""
    if source.kind == "precomp":
        return []
    root = DataRoot.resolve(source.path)
    images = read_table(root.clean_images, CLEAN_IMAGES)
    kept = (images["split"] == split) & ~images["sha256"].isin(unreadable_images(root, source.feature_model))
    return images.loc[kept, "path"].tolist()  # as the split was loaded: unreadable images left out


def _history(run: Path) -> pd.DataFrame:
    path = run / METRICS_FILE
    return read_table(path, RUN_METRICS) if path.is_file() else pd.DataFrame(columns=RUN_METRICS.columns)


def _example_queries(count: int, total: int) -> list[int]:
    return sorted(set(np.linspace(0, total - 1, num=min(count, total)).astype(int).tolist())) if count else []


@dataclass
class Report:
    table: pd.DataFrame
    markdown: str
    files: list[Path]


def report_runs(
    root: DataRoot, runs: dict[str, str], settings: EvaluateConfig, device: str = "auto", log: Callable[[str], None] = print
) -> Report:
    """Evaluate each run, then write the comparison: table, curves, losses and examples."""
    tables: dict[str, pd.DataFrame] = {}
    ranked: dict[str, RankedQueries] = {}
    shown: list[tuple[str, EmbeddedSplit]] = []
    files: list[Path] = []
    for label, run_dir in runs.items():
        run = Path(run_dir)
        own: dict[str, RankedQueries] = {}

        def keep(embedded: EmbeddedSplit, label: str = label, own: dict[str, RankedQueries] = own) -> None:
            i2t, t2i = retrieval_ranks(embedded.images, embedded.captions, embedded.captions_per_image)
            own[f"{label}/{embedded.stage}"] = RankedQueries(i2t, t2i)
            shown.append((f"{label}/{embedded.stage}", embedded))

        tables[label] = evaluate_run(run, settings.split, settings.protocol, device, also=keep)
        files += [plot_recall_curves(own, run / "recall_at_k.png"), plot_training({label: _history(run)}, run / "training.png")]
        ranked.update(own)
        log(f"evaluate: {label} ({run.name})\n{format_table(tables[label])}")
    table = stack_runs(tables)
    folder = root.runs_dir / REPORT_DIR
    write_table(folder / "results.parquet", table.assign(stage=table["variant"]).drop(columns=["variant"]), RUN_EVALUATION)
    files += [
        plot_recall_curves(ranked, folder / "recall_at_k.png"),
        plot_training({label: _history(Path(run)) for label, run in runs.items()}, folder / "training.png"),
    ]
    final_label, final = shown[-1]
    source = run_source(Path(runs[list(runs)[-1]]))
    split = settings.split or source.test_split
    names = image_names(source, split) or [f"{split} image {i}" for i in range(len(final.images))]
    queries = _example_queries(settings.examples, len(final.captions))
    scores = (final.captions[queries] @ final.images.T).numpy() if queries else np.zeros((0, len(final.images)))
    texts = read_split(source, split).captions
    image_files = (
        [str(DataRoot.resolve(source.path).root / n) for n in image_names(source, split)] if source.kind == "parquet" else []
    )
    examples = retrieval_examples(
        [texts[q] for q in queries], final.data.caption_image[queries], scores, [Path(n).name for n in names], range(len(queries)),
        image_files=image_files if len(image_files) == len(final.images) else (),
    )  # fmt: skip
    markdown = (
        f"# webvse results ({split} split, protocol {settings.protocol})\n\n```\n{format_table(table, 'variant')}\n```\n\n"
        f"Runs: " + ", ".join(f"`{label}` = `{run}`" for label, run in runs.items()) + "\n\n"
        f"Plots: `{folder / 'recall_at_k.png'}`, `{folder / 'training.png'}`\n\n"
        f"## Text → image retrieval examples ({final_label})\n\n{examples}"
    )
    atomic_write_text(folder / "results.md", markdown)
    files.append(folder / "results.md")
    return Report(table, markdown, files)


def latest_runs(root: DataRoot) -> dict[str, str]:
    """The runs the last evaluation compared, with the model in use as ``in-use`` where it is not
    among them (it may have been promoted nights ago), else the newest run folder (absolute paths)."""
    in_use = model_in_use(root)
    if root.latest_runs_file.is_file():
        recorded = json.loads(root.latest_runs_file.read_text(encoding="utf-8"))
        runs = {label: os.path.normpath(root.runs_dir / run) for label, run in recorded.items()}  # relative: this root's runs
        if in_use is not None and str(in_use) not in runs.values():
            runs["in-use"] = str(in_use)
        return runs
    if in_use is not None:
        return {"in-use": str(in_use)}
    latest = root.latest_run()
    if latest is None:
        raise MissingInputError(f"no runs under {root.runs_dir}: train first (steps stage1, stage2)")
    return {"latest": str(latest)}


def record_latest_runs(root: DataRoot, runs: dict[str, str]) -> None:
    """``runs/latest.json``, relative to ``runs/`` where the runs are this root's (a copied root stays whole)."""
    relative = {
        label: os.path.relpath(run, root.runs_dir) if Path(run).absolute().is_relative_to(root.runs_dir) else run
        for label, run in runs.items()
    }
    atomic_write_text(root.latest_runs_file, json.dumps(relative, indent=2))


def artifact_suffix(root: DataRoot) -> str:
    """Artifact keys per data root (``<folder name>-<hash of its path>``): the results of two
    roots never overwrite each other's history in the UI."""
    name = re.sub(r"[^a-z0-9]+", "-", root.root.name.lower()).strip("-") or "root"
    return f"{name[:40]}-{hashlib.sha256(str(root.root).encode()).hexdigest()[:6]}"

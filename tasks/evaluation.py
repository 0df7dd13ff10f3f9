"""Evaluation step: a run's best checkpoints on a test split -> a metrics table.

Every stage that has a ``best`` checkpoint is evaluated on the same split and protocol,
so Stage I and Stage II sit side by side; the table is written to
``<run>/evaluation.parquet`` and returned.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from storage.checkpoints import CheckpointStore
from storage.tables import RUN_EVALUATION, write_table
from tasks.training import VOCAB_FILE, read_run_config
from tasks.training_data import DataSource, load_split
from webvse_model.inference import evaluate_split
from webvse_model.metrics import ProtocolResult
from webvse_model.text import Vocabulary
from webvse_model.train import load_model, pick_device

EVALUATION_FILE = "evaluation.parquet"
STAGES = ("stage1", "stage2")


def evaluate_run(run_dir: str | Path, split: str | None = None, protocol: str = "all", device: str = "auto") -> pd.DataFrame:
    """Metrics of each trained stage of ``run_dir`` on ``split`` (default: the test split)."""
    run = Path(run_dir)
    config = read_run_config(run)
    source = DataSource(**config["data"])
    vocab = Vocabulary.load(run / VOCAB_FILE)
    data = load_split(source, split or source.test_split, vocab)
    dev = pick_device(device)
    rows = []
    for stage in STAGES:
        store = CheckpointStore(run / stage)
        if not store.has("best"):
            continue
        model = load_model(store, "best", dev)
        result = evaluate_split(model, data, source.captions_per_image, protocol)
        assert isinstance(result, ProtocolResult)
        rows.append({"stage": stage, "split": split or source.test_split, "protocol": protocol, **result.metrics.to_dict()})
    if not rows:
        raise FileNotFoundError(f"{run} has no trained stage (no stage1/ or stage2/ best checkpoint)")
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

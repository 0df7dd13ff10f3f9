"""The model in use and the history of decisions: ``runs/in_use.json`` and ``runs/models.parquet``.

Reading and writing these two records needs neither torch nor Prefect, so ``webvse models``
answers at once; deciding on a candidate (which evaluates it) is :mod:`tasks.training.promotion`.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from storage.atomic import atomic_write_text
from storage.errors import MissingInputError
from storage.layout import CONFIG_FILE, DataRoot
from storage.tables import MODELS, read_table, write_table

NIGHTS_PLOT = "nights.png"  # runs/report/nights.png: the decisions night by night


def model_in_use(root: DataRoot) -> Path | None:
    """The run of the model in use; None before the first promotion."""
    if not root.in_use_file.is_file():
        return None
    recorded = json.loads(root.in_use_file.read_text(encoding="utf-8"))
    run = Path(os.path.normpath(root.runs_dir / recorded["run"]))
    if not (run / CONFIG_FILE).is_file():
        raise MissingInputError(
            f"{root.in_use_file} names {run}, which is not a run folder any more: 'webvse rollback --to RUN' sets another"
        )
    return run


def set_in_use(root: DataRoot, run: Path) -> None:
    atomic_write_text(root.in_use_file, json.dumps({"run": relative_to_runs(root, run), "since": now_utc()}, indent=2))


def relative_to_runs(root: DataRoot, run: Path | None) -> str:
    """How the records name a run: relative to ``runs/``, so a copied data root keeps its history."""
    return "" if run is None else os.path.relpath(run.absolute(), root.runs_dir)


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def model_history(root: DataRoot) -> pd.DataFrame:
    return read_table(root.models_history, MODELS) if root.models_history.is_file() else pd.DataFrame(columns=MODELS.columns)


def record_decision(root: DataRoot, row: dict[str, Any]) -> pd.DataFrame:
    """Append one decision (or rollback) to the history; returns the whole history."""
    history = pd.concat([model_history(root), pd.DataFrame([row])], ignore_index=True)
    write_table(root.models_history, history, MODELS)
    return history

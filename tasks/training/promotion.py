"""When a new model replaces the one in use.

A pipeline run ends with a *candidate*: the run of its final model (Stage II of the
webly run, or of the night's continued run). The candidate replaces the model in use only
if its validation rsum beats the in-use model's by more than ``promote.margin``; both are
measured now, on the same clean validation split, so the comparison is fair even when
the in-use model was validated on an older copy of it. Every decision (and every
rollback) is a row of ``runs/models.parquet`` with both scores and the reason; the
model in use is ``runs/in_use.json``, which ``webvse search`` and ``re-evaluate`` read. Both
records are read and written by :mod:`tasks.training.model_registry` (no torch); this module
decides, which means evaluating the candidate.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from storage.errors import InputError
from storage.layout import CONFIG_FILE, REPORT_DIR, VOCAB_FILE, DataRoot
from storage.tables import CRAWL_NIGHTS, WEB_PHOTOS, read_table
from tasks.data.training_data import load_split
from tasks.reporting.evaluation import run_source
from tasks.reporting.plots import plot_nights
from tasks.training.model_registry import (
    NIGHTS_PLOT,
    model_history,
    model_in_use,
    now_utc,
    record_decision,
    relative_to_runs,
    set_in_use,
)
from tasks.training.runs import final_stage_store
from webvse_model.inference import evaluate_split
from webvse_model.text import Vocabulary
from webvse_model.train import load_model, pick_device


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str


def decide(candidate: float, in_use: float | None, margin: float) -> Decision:
    """Promote when there is no model in use, or when the candidate beats it by more than ``margin``."""
    if in_use is None:
        return Decision(True, "no model in use yet")
    if candidate > in_use + margin:
        return Decision(True, f"validation rsum {candidate:.2f} beats the model in use ({in_use:.2f}) by more than {margin:g}")
    return Decision(
        False, f"validation rsum {candidate:.2f} does not beat the model in use ({in_use:.2f}) by more than {margin:g}"
    )


def validation_rsum(run: str | Path, device: str = "auto") -> float:
    """rsum of the run's final model (Stage II if trained) on its source's validation split."""
    run = Path(run)
    source = run_source(run)
    dev = pick_device(device)
    data = load_split(source, source.val_split, Vocabulary.load(run / VOCAB_FILE), log=lambda _: None)
    return float(evaluate_split(load_model(final_stage_store(run), "best", dev), data, source.captions_per_image).rsum)


# ------------------------------------------------------------------ the history's inputs
def crawl_growth(root: DataRoot) -> tuple[int, int]:
    """(kept web photos in all, photos the last crawl night added)."""
    kept = int((read_table(root.web_photos, WEB_PHOTOS)["status"] == "kept").sum()) if root.web_photos.is_file() else 0
    nights = read_table(root.crawl_nights, CRAWL_NIGHTS) if root.crawl_nights.is_file() else None
    return kept, int(nights["new_kept"].iloc[-1]) if nights is not None and len(nights) else 0


def promote(
    root: DataRoot, candidate: str | Path, margin: float, night: str, test_rsum: float | None = None,
    device: str = "auto", log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Decide on ``candidate``, record the decision, and make it the model in use if promoted."""
    candidate = Path(candidate)
    in_use = model_in_use(root)
    if in_use is not None and in_use.absolute() == candidate.absolute():
        return {"promoted": False, "reason": "the candidate is the model in use already", "in_use": str(in_use)}
    candidate_score = validation_rsum(candidate, device)
    in_use_score = validation_rsum(in_use, device) if in_use is not None else None
    decision = decide(candidate_score, in_use_score, margin)
    web_photos, new_photos = crawl_growth(root)
    row = {
        "decided_at": now_utc(), "night": night, "candidate": relative_to_runs(root, candidate), "candidate_val_rsum": candidate_score,
        "in_use": relative_to_runs(root, in_use), "in_use_val_rsum": math.nan if in_use_score is None else in_use_score,
        "margin": margin, "promoted": decision.promoted, "reason": decision.reason,
        "test_rsum": math.nan if test_rsum is None else test_rsum, "web_photos": web_photos, "new_photos": new_photos,
    }  # fmt: skip
    if decision.promoted:
        set_in_use(root, candidate)
    history = record_decision(root, row)
    plot_history(root, history)
    log(f"promote: {'promoted' if decision.promoted else 'not promoted'} {candidate.name}: {decision.reason}")
    return {**row, "in_use": str(candidate if decision.promoted else in_use)}


def rollback(root: DataRoot, to: str | Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Put back the model promoted before the one in use (or the run ``to``); recorded in the history."""
    current = model_in_use(root)
    if to is not None:
        target = Path(to) if Path(to).is_absolute() else root.runs_dir / to
        if not (target / CONFIG_FILE).is_file():
            raise InputError(f"{target} is not a run folder of {root.runs_dir}")
        final_stage_store(target)  # a run with no trained model cannot be in use
    else:
        history = model_history(root)
        decisions = history[(history["night"] != "rollback") & history["promoted"]]
        promoted = [Path(os.path.normpath(root.runs_dir / c)) for c in decisions["candidate"]]
        before = promoted[: promoted.index(current)] if current in promoted else promoted
        earlier = [run for run in before if run != current]
        if not earlier:
            raise InputError(f"no model was promoted before {current.name if current else 'now'}: nothing to roll back to")
        target = earlier[-1]
    set_in_use(root, target)
    web_photos, _ = crawl_growth(root)
    record_decision(root, {
        "decided_at": now_utc(), "night": "rollback", "candidate": relative_to_runs(root, target), "candidate_val_rsum": math.nan,
        "in_use": relative_to_runs(root, current), "in_use_val_rsum": math.nan, "margin": math.nan, "promoted": True,
        "reason": "rolled back by hand", "test_rsum": math.nan, "web_photos": web_photos, "new_photos": 0,
    })  # fmt: skip
    log(f"rollback: {target.name} is the model in use again (was {current.name if current else 'none'})")
    return target


def plot_history(root: DataRoot, history: pd.DataFrame) -> Path:
    """``runs/report/nights.png`` from the decisions (rollbacks are not nights)."""
    decisions = history[history["night"] != "rollback"].reset_index(drop=True)
    return plot_nights(decisions, root.runs_dir / REPORT_DIR / NIGHTS_PLOT)


def test_rsum_of(records: list[dict[str, Any]], label: str) -> float | None:
    """The test rsum of run ``label``'s final stage in an evaluation's records (None if not evaluated)."""
    stages = {r["variant"].split("/", 1)[1]: float(r["rsum"]) for r in records if r["variant"].split("/", 1)[0] == label}
    return stages.get("stage2", stages.get("stage1"))

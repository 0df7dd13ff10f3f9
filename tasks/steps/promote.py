"""The promote step: the run's final model replaces the model in use only if it validates better
(:mod:`tasks.training.promotion`); the history is published as an artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.artifacts import create_table_artifact
from prefect.context import FlowRunContext, TaskRunContext

from storage.checkpoints import MANIFEST_NAME
from storage.layout import REPORT_DIR, DataRoot
from tasks.orchestration import pipeline_task, step_logger
from tasks.pipeline_config import PromoteConfig
from tasks.reporting.evaluation import artifact_suffix
from tasks.training.model_registry import NIGHTS_PLOT, model_history
from tasks.training.promotion import promote
from tasks.training.runs import final_stage_store


def _promotion_reads(inputs: dict[str, Any]) -> list[Path]:
    """A candidate is decided on once: not ``in_use.json``, which the decision itself (or a
    rollback, a person's decision that a rerun must not undo) changes."""
    return [final_stage_store(inputs["candidate"]).folder / MANIFEST_NAME]


@pipeline_task(
    "promote",
    ("tasks.steps.promote", "tasks.training.promotion", "tasks.reporting.evaluation", "webvse_model"),
    reads=_promotion_reads,
)
def promote_step(
    root: str, candidate: str, settings: PromoteConfig, night: str, test_rsum: float | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Promote the run's final model if it beats the model in use; publish the history as an artifact."""
    data_root = DataRoot.resolve(root)
    decision = promote(data_root, candidate, settings.margin, night, test_rsum, device, step_logger())
    if FlowRunContext.get() is not None or TaskRunContext.get() is not None:
        history = model_history(data_root)
        create_table_artifact(
            history.astype(object).where(history.notna(), "").to_dict("records"), key=f"webvse-models-{artifact_suffix(data_root)}",
            description=f"every promotion decision (validation rsum of the new model and of the model in use) and rollback; "
            f"model in use: {decision['in_use']}; plot {data_root.runs_dir / REPORT_DIR / NIGHTS_PLOT}",
        )  # fmt: skip
    return decision

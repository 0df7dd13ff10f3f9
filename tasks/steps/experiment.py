"""The experiment's report step: every grid cell evaluated, the paper's tables and plots
(:mod:`tasks.reporting.experiment`), published as artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import TaskRunContext

from storage.checkpoints import MANIFEST_NAME
from storage.layout import EXPERIMENT_DIR, DataRoot
from tasks.orchestration import pipeline_task, root_of, step_logger
from tasks.pipeline_config import EvaluateConfig
from tasks.reporting.evaluation import artifact_suffix
from tasks.reporting.experiment import GridRun, report_experiment


def _experiment_reads(inputs: dict[str, Any]) -> list[Path]:
    root = root_of(inputs)
    manifests = [Path(r["run_dir"]) / r["stage"] / MANIFEST_NAME for r in inputs["runs"]]
    return [root.clean_images, root.clean_captions, root.keywords, *manifests]


@pipeline_task(
    "experiment-report",
    ("tasks.steps.experiment", "tasks.reporting", "webvse_model"),
    reads=_experiment_reads,
    writes=lambda i: [root_of(i).runs_dir / EXPERIMENT_DIR / "results.md"],
)
def experiment_report_step(
    root: str, runs: list[dict[str, Any]], settings: EvaluateConfig, karpathy: str | None, device: str = "auto"
) -> list[dict[str, Any]]:
    """Evaluate every grid cell, write the tables and plot, publish them as artifacts."""
    report = report_experiment(DataRoot.resolve(root), [GridRun(**r) for r in runs], settings, karpathy, device, step_logger())
    records = report.summary.drop(columns=[c for c in report.summary.columns if c.endswith("_std") and "r5" in c]).to_dict(
        "records"
    )
    if TaskRunContext.get() is not None:
        where = artifact_suffix(DataRoot.resolve(root))
        create_table_artifact(
            [{"model": r["label"], **{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items() if k != "label"}} for r in records],
            key=f"webvse-experiment-{where}", description=f"mean ± std over seeds per (loss, variant); data root {root}",
        )  # fmt: skip
        create_markdown_artifact(
            report.markdown, key=f"webvse-experiment-report-{where}", description="the experiment in the paper's layout"
        )
    return records

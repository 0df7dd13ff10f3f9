"""The evaluate step: the compared runs' tables, plots and retrieval examples (:mod:`tasks.reporting.evaluation`),
published as Prefect artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext, TaskRunContext

from storage.checkpoints import MANIFEST_NAME
from storage.layout import REPORT_DIR, DataRoot
from tasks.orchestration import pipeline_task, root_of, step_logger
from tasks.pipeline_config import EvaluateConfig
from tasks.reporting.evaluation import STAGES, artifact_suffix, latest_runs, record_latest_runs, report_runs
from tasks.reporting.plots import artifact_table


def _evaluation_reads(inputs: dict[str, Any]) -> list[Path]:
    root = root_of(inputs)
    runs = inputs["runs"] or (latest_runs(root) if root.runs_dir.is_dir() else {})
    manifests = [Path(run) / stage / MANIFEST_NAME for run in runs.values() for stage in STAGES]
    pointer = [root.latest_runs_file, root.in_use_file] if inputs["runs"] is None else []  # which runs, when not given
    return [root.clean_images, root.clean_captions, *pointer, *manifests]


@pipeline_task(
    "evaluate",
    ("tasks.steps.evaluate", "tasks.reporting.evaluation", "tasks.reporting.plots", "tasks.data.training_data", "webvse_model"),
    reads=_evaluation_reads,
    writes=lambda i: [root_of(i).runs_dir / REPORT_DIR / "results.md"],
)
def evaluate_step(root: str, runs: dict[str, str] | None, settings: EvaluateConfig, device: str = "auto") -> list[dict[str, Any]]:
    """Evaluate the given runs (default: the last compared ones), publish table + examples as artifacts."""
    data_root = DataRoot.resolve(root)
    chosen = runs or latest_runs(data_root)
    record_latest_runs(data_root, chosen)
    report = report_runs(data_root, chosen, settings, device, step_logger())
    records = report.table.to_dict("records")
    if FlowRunContext.get() is not None or TaskRunContext.get() is not None:
        where = artifact_suffix(data_root)
        create_table_artifact(
            artifact_table(report.table), key=f"webvse-results-{where}",
            description=f"R@K (%), median and mean rank per model ({settings.protocol}); data root {data_root.root}",
        )  # fmt: skip
        create_markdown_artifact(
            report.markdown,
            key=f"webvse-retrieval-examples-{where}",
            description=f"results and retrieval examples; data root {data_root.root}",
        )
    return records

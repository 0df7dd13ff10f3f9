"""Tiny pipeline configurations and a reader of a flow run's task states."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any
from uuid import UUID

from tasks.pipeline_config import PipelineConfig, config_from_dict

TINY: dict[str, Any] = {
    "world": {"train": 60, "val": 20, "test": 20, "photos_per_object": 4},
    "keywords": {"top_n": 40},
    "crawl": {"per_keyword": 10, "per_page": 50, "max_keywords": 12, "download_workers": 2},
    "features": {"batch_size": 32, "workers": 1},  # a decode thread: the threaded path under Prefect
    "vectors": {"dim": 32},
    "train": {"epochs": 2, "stage2_epochs": 2, "batch_size": 32, "lr_decay_every": 5,
              "embed_dim": 64, "hidden_dim": 64, "word_dim": 32, "gru_hidden": 64},
    "evaluate": {"protocol": "all", "examples": 2},
    "retries": {"crawl": 1, "crawl_delay_seconds": 1, "other": 0},
}  # fmt: skip


def tiny_config(data_root: Path, **sections: dict[str, Any]) -> PipelineConfig:
    values: dict[str, Any] = {key: dict(value) for key, value in TINY.items()}
    for name, overrides in sections.items():
        values[name] = {**values.get(name, {}), **overrides}
    return config_from_dict({**values, "data_root": str(data_root)})


def task_name(run_name: str) -> str:
    """The task of a task run: ``stage1-baseline`` -> ``stage1``, ``crawl-a1b`` -> ``crawl``."""
    for step in ("stage1", "stage2"):  # named after their variant (``run_name`` of the task)
        if run_name.startswith(f"{step}-"):
            return step
    return run_name.rsplit("-", 1)[0]


def _task_runs(flow_run_id: UUID) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )


def task_states(flow_run_id: UUID) -> dict[str, list[str]]:
    """``{task name: [final state name per task run]}`` of one flow run, read from the Prefect API."""
    runs = _task_runs(flow_run_id)
    states: dict[str, list[str]] = defaultdict(list)
    for run in runs:
        states[task_name(run.name)].append(run.state.name if run.state else "?")
    return dict(states)


def run_counts(flow_run_id: UUID) -> dict[str, int]:
    """How many attempts each task run of a flow run made (1 = no retry)."""
    runs = _task_runs(flow_run_id)
    return {task_name(run.name): run.run_count for run in runs}

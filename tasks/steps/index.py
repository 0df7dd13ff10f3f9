"""The index step: a collection and the caption bank embedded with a run for serving (:mod:`tasks.serving.index`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage.checkpoints import MANIFEST_NAME
from storage.layout import EVALUATION_FILE, DataRoot
from tasks.orchestration import pipeline_task, root_of, step_logger
from tasks.pipeline_config import IndexConfig
from tasks.serving.index import build_index, index_dir, index_run


def _index_reads(inputs: dict[str, Any]) -> list[Path]:
    """The model (its checkpoint manifests), the run's evaluation, the collection's tables, the features."""
    root = root_of(inputs)
    run = index_run(root, inputs["run"]) if inputs["run"] or root.runs_dir.is_dir() else None
    settings: IndexConfig = inputs["settings"]
    model = [run / stage / MANIFEST_NAME for stage in ("stage1", "stage2")] + [run / EVALUATION_FILE] if run else []
    collection = {"web": [root.web_photos], "folder": [Path(settings.folder or ".")]}.get(settings.collection, [])
    pointer = [root.in_use_file] if not inputs["run"] else []  # which run, when not given
    return [*model, *pointer, root.clean_images, root.clean_captions, *collection]


@pipeline_task(
    "index",
    ("tasks.steps.index", "tasks.serving", "webvse_model"),
    reads=_index_reads,
    writes=lambda i: [index_dir(index_run(root_of(i), i["run"]), i["settings"].collection, i["settings"].folder)],
)
def index_step(root: str, run: str | None, settings: IndexConfig, device: str = "auto") -> dict[str, Any]:
    """Embed a collection and the caption bank with a run (default: the model in use) for serving."""
    return build_index(index_run(DataRoot.resolve(root), run), settings.settings(), device, step_logger())

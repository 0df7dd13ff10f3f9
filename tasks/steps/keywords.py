"""The keywords step: clean tables from the split file, then keywords and dummy tags (:mod:`tasks.text.keywords`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage.errors import MissingInputError
from storage.layout import DataRoot
from tasks.data.clean_data import ingest_karpathy
from tasks.orchestration import pipeline_task, root_of, step_logger
from tasks.pipeline_config import KeywordsConfig
from tasks.text.backends import load_backend
from tasks.text.keywords import run_keywords


def _keywords_outputs(inputs: dict[str, Any]) -> list[Path]:
    root = root_of(inputs)
    return [root.clean_images, root.clean_captions, root.keywords]


@pipeline_task(
    "keywords",
    (
        "tasks.steps.keywords",
        "tasks.text.keywords",
        "tasks.text.backends",
        "tasks.data.clean_data",
        "webvse_model.datasets.karpathy",
    ),
    reads=lambda i: [Path(i["karpathy"])],
    writes=_keywords_outputs,
)
def keywords_step(root: str, karpathy: str, image_root: str | None, settings: KeywordsConfig) -> dict[str, int]:
    """Clean tables from the split file, then keywords and dummy tags; returns the counts."""
    data_root = DataRoot.resolve(root)
    if not Path(karpathy).is_file():
        raise MissingInputError(
            f"{karpathy} does not exist: generate the offline world (webvse world) or set dataset.karpathy (--karpathy FILE)"
        )
    log = step_logger()
    images = ingest_karpathy(data_root, karpathy, image_root)
    log(f"keywords: clean data {images} from {karpathy}")
    return run_keywords(data_root, load_backend(settings.backend, settings.spacy_model, settings.processes), settings.top_n, log)

"""The vectors step: load or train the word vectors (:mod:`tasks.text.word_vectors`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage.layout import VECTORS_FILE, DataRoot
from storage.tables import CLEAN_IMAGES, read_table
from tasks.orchestration import pipeline_task, root_of, step_logger
from tasks.pipeline_config import VectorsConfig
from tasks.text.word_vectors import caption_file_documents, run_vectors, web_tag_documents


def _vectors_reads(inputs: dict[str, Any]) -> list[Path]:
    root, settings = root_of(inputs), inputs["settings"]
    if settings.pretrained:
        return [Path(settings.pretrained)]
    extra = [Path(settings.extra_captions), root.clean_images] if settings.extra_captions else []
    return [root.clean_captions, *extra] + ([root.web_photos] if settings.web_tags else [])


@pipeline_task(
    "vectors",
    ("tasks.steps.vectors", "tasks.text.word_vectors"),
    reads=_vectors_reads,
    writes=lambda i: [root_of(i).vectors_dir / VECTORS_FILE],
)
def vectors_step(root: str, settings: VectorsConfig) -> str:
    """Load or train the word vectors (on captions and, if set, the web tags); returns the file."""
    data_root = DataRoot.resolve(root)
    log = step_logger()
    extra: list[list[str]] = []
    if settings.extra_captions and not settings.pretrained:
        clean = {Path(p).name for p in read_table(data_root.clean_images, CLEAN_IMAGES)["path"]}
        extra = caption_file_documents(settings.extra_captions, skip_images=clean)
        log(f"vectors: {len(extra)} extra documents from {settings.extra_captions} (images not in the clean set)")
    web = web_tag_documents(data_root) if settings.web_tags and not settings.pretrained else []
    return str(run_vectors(data_root, settings.pretrained, [*extra, *web], settings.dim, settings.seed, log))

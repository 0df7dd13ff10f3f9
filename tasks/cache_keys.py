"""The cache key of a pipeline step: what must change for a step to run again.

``INPUTS + TASK_SOURCE + CodeOf(modules) + ReadsFiles(reads)``:

* its parameters (the config section) and the source of the ``@task`` itself;
* the source of the modules that do the work: Prefect's ``TASK_SOURCE`` only hashes
  the few lines of the wrapper, so a fix in ``webvse_model/metrics.py`` would
  otherwise be served stale results;
* the *content* of the files it reads from the data root (:func:`storage.fingerprint.fingerprint`),
  so a hand-edited ``keywords.parquet`` re-runs the crawl (and, through the crawl's new
  output, what follows) while the keywords step itself stays cached.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext

from storage.fingerprint import fingerprint

PathsOf = Callable[[dict[str, Any]], Iterable[Path]]


@cache
def _module_digest(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"cache policy names an unknown module {module!r}")
    origin = Path(spec.origin)
    files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()


@dataclass
class CodeOf(CachePolicy):
    """Key on the source of the modules (or whole packages) a step runs."""

    modules: tuple[str, ...] = ()

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str:
        return hashlib.sha256("".join(_module_digest(m) for m in self.modules).encode()).hexdigest()


@dataclass
class ReadsFiles(CachePolicy):
    """Key on the content of the files a step reads (named from its inputs)."""

    paths_of: PathsOf | None = None

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        return fingerprint(self.paths_of(inputs)) if self.paths_of else None


def step_cache(modules: tuple[str, ...], reads: PathsOf | None = None) -> CachePolicy:
    """The cache policy of a pipeline step; ``fresh`` (start over) never changes the key."""
    return (INPUTS - "fresh") + TASK_SOURCE + CodeOf(modules=modules) + ReadsFiles(paths_of=reads)

"""What every pipeline task shares: its cache key, its logger, and the step plan.

A step's cache key is ``INPUTS + TASK_SOURCE + CodeOf(modules) + ReadsFiles(reads)``:

* its parameters (the config section) and the source of the ``@task`` itself;
* the source of the modules that do the work: Prefect's ``TASK_SOURCE`` only hashes
  the few lines of the wrapper, so a fix in ``webvse_model/metrics.py`` would
  otherwise be served stale results;
* the *content* of the files it reads from the data root, so a hand-edited
  ``keywords.parquet`` re-runs the crawl (and, through the crawl's new output, what
  follows) while the keywords step itself stays cached;

and, checked per call rather than keyed (see :class:`StepCall`), whether its outputs
still exist.

Cache records (with the small results they hold: paths and summaries, never arrays)
live under ``<data root>/cache/prefect``, next to the data they describe.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff

from storage.fingerprint import fingerprint
from storage.layout import DataRoot
from tasks.pipeline_config import STEPS, RetryConfig, Step

TASK_RUNNER_ENV, DASK_ADDRESS_ENV = "WEBVSE_TASK_RUNNER", "WEBVSE_DASK_ADDRESS"
PathsOf = Callable[[dict[str, Any]], Iterable[Path]]
P = ParamSpec("P")
R = TypeVar("R")

# Which steps read what another step wrote: refreshing a step refreshes these too.
DEPENDS_ON: dict[Step, tuple[Step, ...]] = {
    "world": (),
    "keywords": ("world",),
    "crawl": ("world", "keywords"),
    "features": ("keywords", "crawl"),
    "vectors": ("keywords", "crawl"),
    "stage1": ("keywords", "features", "vectors"),
    "stage2": ("stage1", "crawl", "features", "vectors"),
    "evaluate": ("stage1", "stage2"),
}


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


OUTPUTS: dict[str, PathsOf] = {}


def pipeline_task(
    name: str, modules: tuple[str, ...], reads: PathsOf | None = None, writes: PathsOf | None = None
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """``@task`` with the step's cache policy; ``writes`` names its outputs, whose absence forces a re-run."""

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        if writes is not None:
            OUTPUTS[name] = writes
        return task(name=name, cache_policy=step_cache(modules, reads))(fn)

    return decorate


def root_of(inputs: dict[str, Any]) -> DataRoot:
    return DataRoot.resolve(inputs["root"])


def step_logger() -> Callable[[str], None]:
    """The Prefect run logger inside a run (progress shows in the UI), else a plain logger."""
    try:
        return get_run_logger().info
    except MissingContextError:
        logger = logging.getLogger("webvse")
        return logger.info


def attempt_number() -> int:
    """1 on a task's first attempt, 2 on its first retry, ... (1 outside Prefect)."""
    context = TaskRunContext.get()
    return context.task_run.run_count if context is not None and context.task_run is not None else 1


@dataclass(frozen=True)
class StepPlan:
    """Which steps run (``steps``) and which are forced past their cache (``refresh`` and what depends on it)."""

    selected: frozenset[Step]
    refreshed: frozenset[Step] = field(default_factory=frozenset)

    @classmethod
    def make(cls, steps: Iterable[Step] | None, refresh: Iterable[Step] = ()) -> StepPlan:
        selected = frozenset(steps) if steps else frozenset(STEPS)
        unknown = (selected | set(refresh)) - set(STEPS)
        if unknown:
            raise ValueError(f"unknown step(s) {sorted(unknown)}; steps are {list(STEPS)}")
        forced = set(refresh)
        for step in STEPS:  # STEPS is in dependency order, so one pass closes the set
            if any(d in forced for d in DEPENDS_ON[step]):
                forced.add(step)
        return cls(selected, frozenset(forced))

    def runs(self, step: Step) -> bool:
        return step in self.selected

    def fresh(self, step: Step) -> bool:
        return step in self.refreshed


@dataclass(frozen=True)
class StepCall:
    """Calls a step's task, past its cache when the plan refreshes it or its outputs are gone.

    Output existence cannot be part of the cache key (it is computed before the first
    run, when the outputs never exist), so it is checked here, per call, instead: a
    deleted folder is rebuilt rather than "served" from a record that points at nothing.
    """

    task: Task[Any, Any]
    refresh: bool

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        inputs = inspect.signature(self.task.fn).bind(*args, **kwargs)
        inputs.apply_defaults()
        writes = OUTPUTS.get(self.task.name)
        gone = writes is not None and not all(Path(p).exists() for p in writes(dict(inputs.arguments)))
        return self.task.with_options(refresh_cache=self.refresh or gone)(*args, **kwargs)

    def map(self, *args: Any, **kwargs: Any) -> Any:
        """One task run per element on the flow's task runner (threads, or Dask workers)."""
        return self.task.with_options(refresh_cache=self.refresh).map(*args, **kwargs)


def configured(task: Task[Any, Any], step: Step, root: DataRoot, plan: StepPlan, retries: RetryConfig) -> StepCall:
    """``task`` with the cache under the data root, ``refresh`` from the plan and its retries."""
    if step == "crawl":
        count, delay = retries.crawl, exponential_backoff(backoff_factor=retries.crawl_delay_seconds)(max(retries.crawl, 1))
        jitter = 0.5
    else:
        count, delay, jitter = retries.other, retries.other_delay_seconds, None
    assert task.cache_policy is not None and not isinstance(task.cache_policy, type)
    options = task.with_options(
        cache_policy=task.cache_policy.configure(key_storage=str(root.cache_dir / "prefect")),
        retries=count,
        retry_delay_seconds=delay,
        retry_jitter_factor=jitter,
    )
    return StepCall(options, plan.fresh(step))

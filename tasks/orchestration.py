"""What every pipeline task shares: its decorator, retries, logger and the step plan.

A step's cache key is :func:`tasks.cache_keys.step_cache`; whether its outputs still
exist is checked per call rather than keyed (see :class:`StepCall`).

Cache records (with the small results they hold: paths and summaries, never arrays)
live under ``<data root>/cache/prefect``, next to the data they describe.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import inspect
import logging
import signal
import subprocess
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.states import State
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import NotSet

from storage.atomic import atomic_write_text
from storage.errors import InputError, WebvseError, is_transient
from storage.fingerprint import fingerprint
from storage.layout import DataRoot
from tasks.cache_keys import PathsOf, step_cache
from tasks.pipeline_config import STEPS, RetryConfig, Step

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
    "promote": ("stage1", "stage2", "evaluate"),
    "index": ("keywords", "features", "stage1", "stage2", "evaluate", "promote"),
}


OUTPUTS: dict[str, PathsOf] = {}


@dataclass(frozen=True)
class StepResult:
    """What a step's cache record holds: the step's return value and the fingerprint of the
    outputs it wrote, so a cache hit can be checked against the files as they are now."""

    value: Any
    outputs: str | None


def pipeline_task(
    name: str, modules: tuple[str, ...], reads: PathsOf | None = None, writes: PathsOf | None = None, run_name: str | None = None
) -> Callable[[Callable[P, R]], Task[P, StepResult]]:
    """``@task`` with the step's cache policy, retried only on transient errors (see
    :func:`storage.errors.is_transient`); ``writes`` names its outputs, which are
    fingerprinted into the cache record (see :class:`StepCall`); ``run_name`` is the task
    run's name, formatted with its parameters (``"stage1-{label}"``: which variant it is)."""

    def decorate(fn: Callable[P, R]) -> Task[P, StepResult]:
        if writes is not None:
            OUTPUTS[name] = writes
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def recorded(*args: P.args, **kwargs: P.kwargs) -> StepResult:
            value = fn(*args, **kwargs)
            return StepResult(value, _outputs_fingerprint(name, signature, args, kwargs))

        policy = step_cache(modules, reads)
        return task(name=name, task_run_name=run_name, cache_policy=policy, retry_condition_fn=retry_if_transient)(recorded)

    return decorate


def _outputs_fingerprint(name: str, signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Fingerprint the outputs a step run just wrote, and note it as the step's last write there."""
    writes = OUTPUTS.get(name)
    if writes is None:
        return None
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    paths = list(writes(dict(bound.arguments)))
    written = fingerprint(paths)
    atomic_write_text(_last_write_record(name, root_of(bound.arguments), paths), written)
    return written


def _last_write_record(name: str, root: DataRoot, paths: Iterable[Path]) -> Path:
    """Where the fingerprint of the last outputs step ``name`` wrote to ``paths`` is kept."""
    where = hashlib.sha256("\0".join(str(p) for p in paths).encode()).hexdigest()[:16]
    return root.cache_dir / "outputs" / f"{name}-{where}.txt"


def retry_if_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's retry condition: a bad input or a bug fails at once, without the retry delay."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return not isinstance(exc, BaseException) or is_transient(exc)


def root_of(inputs: dict[str, Any]) -> DataRoot:
    return DataRoot.resolve(inputs["root"])


def step_logger() -> Callable[[str], None]:
    """The Prefect run logger inside a run (progress shows in the UI), else a plain logger."""
    try:
        return get_run_logger().info
    except MissingContextError:
        logger = logging.getLogger("webvse")
        return logger.info


class _KnownErrorsBrief(logging.Filter):
    """Drops the traceback from Prefect's log records of a known :class:`WebvseError`: its
    message already says what is wrong and what to do; 60 lines of engine frames do not.
    Bugs (any other exception) keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], WebvseError):
            record.exc_info, record.exc_text = None, None
        return True


def brief_known_errors() -> None:
    """Install :class:`_KnownErrorsBrief` on the handlers of Prefect's run loggers (idempotent)."""
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.engine", ""):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _KnownErrorsBrief) for f in handler.filters):
                handler.addFilter(_KnownErrorsBrief())


def shield_temporary_server_from_ctrl_c() -> None:
    """Make the temporary API server Prefect starts in ephemeral mode ignore the terminal's Ctrl-C.

    A Ctrl-C in a terminal goes to the whole foreground process group, so it used to kill the
    temporary server together with webvse: the engine then spent ~95 s retrying the dead API
    to report the interrupt, printed connection tracebacks, left the run "Running" and needed
    a second Ctrl-C. Started with SIGINT blocked (a blocked signal stays blocked across exec),
    only webvse sees the Ctrl-C; the server records the Crashed state and is stopped with
    SIGTERM when webvse exits, as Prefect always stops it.

    Call before the first flow run of a command. Prefect keeps one temporary server per port in
    ``SubprocessASGIServer._instances`` (there is no public hook for how it is started): the
    instance registered here is the one Prefect's client then starts and uses.
    """
    from prefect.server.api.server import SubprocessASGIServer  # 2 s of imports: only for commands that run a flow

    class CtrlCShieldedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                return super()._run_uvicorn_command()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    CtrlCShieldedServer()


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
            raise InputError(f"unknown step(s) {sorted(unknown)}; steps are {list(STEPS)}")
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
class StepOutcome:
    """What one call of a step gave: its value, and whether the cache served it."""

    value: Any
    cached: bool


@dataclass(frozen=True)
class StepCall:
    """Calls a step's task, past its cache when the plan refreshes it or its outputs changed.

    Output existence cannot be part of the cache key (it is computed before the first
    run, when the outputs never exist), so outputs are checked per call instead: against
    the fingerprint the cache record holds. Outputs that are gone, or that another
    configuration's run has since overwritten (``vectors/word_vectors.bin`` of another
    ``vectors.dim``), make the step run again rather than be "served" from a record
    that no longer describes the files.
    """

    task: Task[Any, StepResult]
    refresh: bool

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.outcome(*args, **kwargs).value

    def outcome(self, *args: Any, **kwargs: Any) -> StepOutcome:
        """The step's value and whether it was served from the cache (nothing to do)."""
        inputs = inspect.signature(self.task.fn).bind(*args, **kwargs)
        inputs.apply_defaults()
        writes = OUTPUTS.get(self.task.name)
        paths = list(writes(dict(inputs.arguments))) if writes is not None else []
        gone = not all(Path(p).exists() for p in paths)
        state = self.task.with_options(refresh_cache=self.refresh or gone)(*args, return_state=True, **kwargs)
        result: StepResult = state.result()
        if state.name == "Cached" and paths and self._overwritten(result, paths, root_of(inputs.arguments)):
            step_logger()(
                f"{self.task.name}: another run of the step has replaced the outputs of this cached one; running it again"
            )
            return StepOutcome(self.task.with_options(refresh_cache=True)(*args, **kwargs).value, cached=False)
        return StepOutcome(result.value, cached=state.name == "Cached")

    def _overwritten(self, cached: StepResult, paths: list[Path], root: DataRoot) -> bool:
        """The files differ from the cache record's *and* were written by another run of this step
        (another configuration). Files edited by hand since (a curated ``keywords.parquet``) are
        the user's input: they are kept and the steps that read them re-run instead."""
        now = fingerprint(paths)
        if now == cached.outputs:
            return False
        record = _last_write_record(self.task.name, root, paths)
        return record.is_file() and record.read_text() == now

    def map(self, *args: Any, **kwargs: Any) -> Any:
        """One task run per element on the flow's task runner (threads, or Dask workers)."""
        return self.task.with_options(refresh_cache=self.refresh).map(*args, **kwargs)


def configured(task: Task[Any, Any], step: Step, root: DataRoot, plan: StepPlan, retries: RetryConfig) -> StepCall:
    """``task`` with the cache under the data root, ``refresh`` from the plan and its retries."""
    delay: float | list[float]
    jitter: float | type[NotSet] = NotSet
    if step == "crawl":  # a service that may be down for a while: exponential backoff with jitter
        count, delay, jitter = (
            retries.crawl,
            exponential_backoff(backoff_factor=retries.crawl_delay_seconds)(max(retries.crawl, 1)),
            0.5,
        )
    else:
        count, delay = retries.other, retries.other_delay_seconds
    policy = task.cache_policy
    if policy is None or isinstance(policy, type):
        raise TypeError(f"task {task.name} has no cache policy instance: declare it with pipeline_task")
    options = task.with_options(
        cache_policy=policy.configure(key_storage=str(root.cache_dir / "prefect")),
        retries=count,
        retry_delay_seconds=delay,
        retry_jitter_factor=jitter,
    )
    return StepCall(options, plan.fresh(step))


def concurrently(calls: Sequence[Callable[[], R]]) -> list[R]:
    """Run independent step calls at once and return their values in order; the first error is
    raised once every call has ended. The first call runs in the calling thread (the flow's:
    where the allocator tuning of :mod:`webvse_model.allocator` applies, so put the CNN there),
    each other one in a thread of its own within the current flow run (its context is copied,
    as Prefect's thread pool does)."""
    if len(calls) <= 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(len(calls) - 1, thread_name_prefix="webvse-step") as pool:
        others = [pool.submit(contextvars.copy_context().run, call) for call in calls[1:]]
        first = calls[0]()  # should it raise, leaving the pool still waits for the others
        return [first, *(future.result() for future in others)]

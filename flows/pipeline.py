"""The ``webvse`` flow: keywords -> crawl -> features -> vectors -> stage1 -> stage2 -> evaluate -> promote -> index.

Steps that do not depend on each other run at once (:func:`tasks.orchestration.concurrently`):
the world's web corpus renders while the keywords step tags the captions, Word2Vec trains beside
the CNN features, and on the CPU the two Stage I runs train side by side, sharing the cores.

Composition only. Each step is a task of ``tasks/`` with its own retries and a cache
keyed on its parameters, its code and the content of the files it reads (see
:mod:`tasks.orchestration`), so a second run of the same configuration is served
from cache, ``refresh=["crawl"]`` re-runs the crawl and what depends on it, and
``steps=["evaluate"]`` re-evaluates the last compared runs alone.

``nightly=True`` is one night of the nightly cycle: the crawl runs once per night (the
night's date joins its cache key) and adds the photos uploaded since the last crawl; Stage
I stays cached unless the clean data or its settings changed; Stage II continues the model
in use on the grown web corpus (run ``night-<date>-<fingerprint>``); the promote step
makes it the model in use only if it validates better (:mod:`tasks.training.promotion`).

The task runner is Prefect's ThreadPoolTaskRunner; ``webvse.with_options(task_runner=
task_runner("dask", address))`` (``webvse run --task-runner dask``) runs the steps on
prefect-dask's DaskTaskRunner, and :mod:`flows.dask_pipeline` is that flow for deployments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from prefect import flow, unmapped
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from storage.errors import InputError
from tasks.data.training_data import DataSource
from tasks.imaging.features import features_id
from tasks.orchestration import StepOutcome, StepPlan, concurrently, configured
from tasks.pipeline_config import PipelineConfig, Step
from tasks.steps.crawl import crawl_night, crawl_step
from tasks.steps.evaluate import evaluate_step
from tasks.steps.features import feature_chunks_step, features_shard_step, features_step
from tasks.steps.index import index_step
from tasks.steps.keywords import keywords_step
from tasks.steps.promote import promote_step
from tasks.steps.training import stage1_step, stage2_step
from tasks.steps.vectors import vectors_step
from tasks.steps.world import world_corpus_step, world_step
from tasks.training.core_share import trains_side_by_side
from tasks.training.model_registry import model_in_use
from tasks.training.promotion import test_rsum_of
from tasks.training.runs import run_settings


def task_runner(kind: str = "thread", dask_address: str | None = None) -> TaskRunner[Any]:
    """Prefect's thread pool, or prefect-dask's DaskTaskRunner (``pip install webvse[dask]``): a
    local cluster, or the one at ``dask_address`` (``tcp://scheduler:8786``)."""
    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=4)
    if kind != "dask":
        raise InputError(f"task runner must be 'thread' or 'dask', got {kind!r}")
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=dask_address) if dask_address else DaskTaskRunner()


@dataclass(frozen=True)
class PreparedData:
    """The training source and what each data step that ran gave (its summary, and whether it was cached)."""

    source: DataSource
    steps: dict[str, StepOutcome]


def prepare_data(config: PipelineConfig, plan: StepPlan, nightly: bool = False) -> PreparedData:
    """world -> keywords -> crawl -> features -> vectors (those the plan selects); the training source.
    ``nightly``: the crawl is cached per night (see the module's docstring), not once for all."""
    root = config.root.ensure_writable()
    data_root = str(root.root)
    done: dict[str, StepOutcome] = {}
    world = plan.runs("world") and config.uses_world
    if world:
        done["world"] = configured(world_step, "world", root, plan, config.retries).outcome(data_root, config.world)

    def keywords() -> StepOutcome:
        step = configured(keywords_step, "keywords", root, plan, config.retries)
        return step.outcome(data_root, config.karpathy_path(), config.dataset.image_root, config.keywords)

    def corpus() -> StepOutcome:
        return configured(world_corpus_step, "world", root, plan, config.retries).outcome(data_root, config.world)

    # the keywords need the clean dataset only: the world's web corpus renders beside them (the crawl needs both)
    tagging: dict[str, Callable[[], StepOutcome]] = {"keywords": keywords} if plan.runs("keywords") else {}
    if world:
        tagging["corpus"] = corpus
    outcomes = dict(zip(tagging, concurrently(list(tagging.values())), strict=True))
    if "keywords" in outcomes:
        done["keywords"] = outcomes["keywords"]
    if "corpus" in outcomes:
        clean = done["world"]
        done["world"] = StepOutcome(clean.value | outcomes["corpus"].value, clean.cached and outcomes["corpus"].cached)
    if plan.runs("crawl"):
        night = crawl_night(config.corpus_path()) if nightly else None
        done["crawl"] = configured(crawl_step, "crawl", root, plan, config.retries).outcome(
            data_root, config.crawl, config.corpus_path(), night
        )

    def features() -> StepOutcome:
        if config.features.parallel_shards > 1:
            chunks = feature_chunks_step(
                data_root, config.features, config.features.parallel_shards, config.device, config.precision
            )
            shards = configured(features_shard_step, "features", root, plan, config.retries)
            shards.map(data_root, chunks, unmapped(config.features), unmapped(config.device), unmapped(config.precision)).result()
        step = configured(features_step, "features", root, plan, config.retries)
        return step.outcome(data_root, config.features, config.device, config.precision)

    def vectors() -> StepOutcome:
        return configured(vectors_step, "vectors", root, plan, config.retries).outcome(data_root, config.vectors)

    # independent of each other: Word2Vec (one core) beside the CNN
    independent: dict[Step, Callable[[], StepOutcome]] = {"features": features, "vectors": vectors}
    last = {name: call for name, call in independent.items() if plan.runs(name)}
    done |= dict(zip(last, concurrently(list(last.values())), strict=True))
    feature_model = features_id(config.features.encoder, config.device, config.precision)
    skip = config.features.on_bad_image == "skip"
    source = DataSource(
        data_root,
        "parquet",
        config.dataset.captions_per_image,
        val_split="val",
        feature_model=feature_model,
        skip_unreadable=skip,
    )
    return PreparedData(source, done)


@flow(name="webvse", task_runner=task_runner(), log_prints=True)
def webvse(
    config: PipelineConfig = PipelineConfig(),
    steps: list[Step] | None = None,
    refresh: list[Step] | None = None,
    nightly: bool = False,
) -> dict[str, Any]:
    """Webly supervised joint embeddings, end to end; returns the evaluation table, run folders and promotion."""
    plan = StepPlan.make(steps, refresh or [])
    root = config.root
    data_root = str(root.root)
    prepared = prepare_data(config, plan, nightly)
    source = prepared.source
    night = crawl_night(config.corpus_path())

    def step(name: Step, task: Any) -> Any:
        return configured(task, name, root, plan, config.retries)

    runs: dict[str, str] = {}
    if plan.runs("stage1"):
        variants = ({"baseline": 0.0} if config.train.baseline else {}) | {"webly": None}
        calls = [
            partial(
                step("stage1", stage1_step),
                data_root,
                source,
                run_settings(config.train, config.device, lam, config.precision),
                label,
                fresh=plan.fresh("stage1"),
            )
            for label, lam in variants.items()
        ]
        trained = concurrently(calls) if trains_side_by_side(config.device) else [call() for call in calls]
        stage1 = dict(zip(variants, trained, strict=True))
        runs = {label: result["run_dir"] for label, result in stage1.items()}
        if plan.runs("stage2") and config.train.stage2_epochs > 0:
            in_use = model_in_use(root) if nightly else None
            result = step("stage2", stage2_step)(
                data_root, stage1["webly"]["run_dir"], source, run_settings(config.train, config.device, precision=config.precision),
                f"night-{night}" if nightly else "webly", start_from=str(in_use) if in_use else None, fresh=plan.fresh("stage2"),
            )  # fmt: skip
            runs["webly"] = result["run_dir"]
    table = (
        step("evaluate", evaluate_step)(data_root, runs or None, config.evaluate, config.device) if plan.runs("evaluate") else []
    )
    promotion = None
    if plan.runs("promote") and "webly" in runs:
        promotion = step("promote", promote_step)(
            data_root, runs["webly"], config.promote, night, test_rsum_of(table, "webly"), config.device
        )
    index = None
    if plan.runs("index"):
        served = config.index.run or model_in_use(root) or runs.get("webly")  # what `webvse serve` serves
        indexed = step("index", index_step).outcome(data_root, str(served) if served else None, config.index, config.device)
        prepared.steps["index"], index = indexed, indexed.value  # `webvse index` reports it like a data step
    return {"runs": runs, "results": table, "promotion": promotion, "index": index, "steps": prepared.steps}

"""What each ``webvse`` command does, once its flags are parsed (:mod:`flows.cli` builds the parser).

Composition only: every command calls a function of ``tasks`` or runs the ``webvse`` flow.
Apart from the parser so that ``webvse --help`` and a mistyped flag answer at once. Each command
imports the parts of ``tasks`` it calls (torch, Prefect, spaCy, gensim: ~10 s on 2 cores), after
its own input is checked: a missing configuration file, a bad ``--set`` or an unknown run is one
line within a second or two, and ``webvse models`` never loads torch.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from flows.config_flags import flag_overrides
from storage.errors import InputError, MissingInputError
from storage.layout import REPORT_DIR, DataRoot
from tasks.pipeline_config import (
    PipelineConfig,
    Step,
    config_from_dict,
    demo_config,
    load_config,
    merge_dotted,
)

if TYPE_CHECKING:
    from tasks.serving.retrieval import Answer, Retriever
    from tasks.training.runs import RunSettings


def describe_step(step: str, value: Any, config: PipelineConfig) -> list[str]:
    """What a data step made, in a few lines for the terminal."""
    root = config.root
    if value is None:
        return [f"{step}: not needed by this configuration (dataset.karpathy and crawl.api_url or crawl.corpus are set)"]
    if step == "world":
        return [f"captioned dataset: {value['karpathy']}",
                f"Flickr corpus:     {value['corpus']}   serve it with: webvse flickr-server --corpus {value['corpus']}"]  # fmt: skip
    if step == "keywords":
        return [f"{value['keywords']} keywords -> {root.keywords}; dummy tags -> {root.clean_captions}"]
    if step == "crawl":
        lines = [f"night {value['night']} ({value['mode']}) added {value['new_kept']} photos; kept {value['kept']} in all, "
                 f"with {value['api_calls']} API calls in {value['seconds']:.1f}s -> {root.web_photos}"]  # fmt: skip
        return lines + [f"  {status:<28}{count:>7}" for status, count in sorted(value["statuses"].items())]
    if step == "features":
        return [
            f"{value['computed']} computed, {value['cached']} cached, {value['failed']} failed -> {root.features_dir(value['encoder_id'])}"
        ]
    if step == "vectors":
        return [f"word vectors -> {value}"]
    if step == "index":
        metrics = value["test_metrics"]
        scored = f"; its test R@1 {metrics['t2i_r1']:.1f} / R@10 {metrics['t2i_r10']:.1f} (text->image)" if metrics else ""
        return [f"{value['items']} {value['collection']} images, {value['captions']} captions with {value['run']}/{value['stage']}{scored}",
                f"{value['search']} search, recall@10 against exact {value['recall_at_10_vs_exact']:.3f}; built in {value['build_seconds']:.1f}s",
                f"serve it: webvse serve --run {value['run_dir']} --collection {value['settings']['collection']}"]  # fmt: skip
    return [f"{step}: {value}"]


def _settings(args: argparse.Namespace) -> RunSettings:
    """The ``train`` command's flags as the flow's ``train`` section, made into settings in the one way."""
    config = config_from_dict(merge_dotted({}, flag_overrides(args)), "command line")
    from tasks.training.runs import run_settings

    return run_settings(config.train, args.device, precision=args.precision)


def _resolve_run(root: DataRoot, run: str | None) -> Path:
    """A run folder: the latest, a folder path, or a run id under the data root's ``runs/``."""
    if run is None:
        latest = root.latest_run()
        if latest is None:
            raise MissingInputError(f"no runs under {root.runs_dir}; train one first (webvse run, or webvse train)")
        return latest
    candidate = Path(run)
    if candidate.is_dir():
        return candidate
    if os.sep in run or run in {".", ".."}:
        raise MissingInputError(f"no run folder {run}")
    folder = root.run_dir(run)
    if not folder.is_dir():
        known = sorted(p.name for p in root.runs_dir.glob("*/config.json")) if root.runs_dir.is_dir() else []
        raise MissingInputError(f"no run {run!r} under {root.runs_dir}" + (f"; runs there: {', '.join(known)}" if known else ""))
    return folder


def cmd_train(args: argparse.Namespace) -> None:
    root = DataRoot.resolve(args.data_root)
    run_id = args.run_id or time.strftime("run-%Y%m%d-%H%M%S")
    settings = _settings(args)
    from tasks.data.training_data import DataSource, has_web_data
    from tasks.training.runs import train_run

    if args.precomp:
        source = DataSource(args.precomp, "precomp", args.captions_per_image, val_split=args.val_split or "dev")
    else:
        source = DataSource(
            args.parquet_root,
            "parquet",
            args.captions_per_image,
            val_split=args.val_split or "val",
            feature_model=args.feature_model,
        )
    if settings.stage2 is not None and settings.stage1.lambda_tag == 0:
        print("the baseline (--lambda-tag 0) is Stage I only, as in the flow")
        settings = replace(settings, stage2=None)
    if settings.stage2 is not None and not has_web_data(source):
        print(
            f"{source.path} has no web image-tag pairs: Stage I only (the crawl, features and vectors steps give a data root its web pairs)"
        )
        settings = replace(settings, stage2=None)
    results = train_run(root.run_dir(run_id), source, settings, resume=not args.no_resume)
    for name, result in results.items():
        print(f"{name}: best val rsum {result.best_rsum:.2f} at epoch {result.best_epoch}")
    print(f"run folder: {root.run_dir(run_id)}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    run = _resolve_run(DataRoot.resolve(args.data_root), args.run)
    from tasks.reporting.evaluation import evaluate_run, format_table

    print(format_table(evaluate_run(run, args.split, args.protocol, args.device)))
    print(f"written: {run / 'evaluation.parquet'}")


def run_tags(config: PipelineConfig, config_name: str) -> list[str]:
    """Flow run tags: which data root and which configuration (file name, or demo/defaults)."""
    return [f"data-root:{config.root.root}", f"config:{config_name}"]


def _ready_for_a_flow() -> None:
    """Known step errors logged in brief, and the temporary Prefect server kept alive through a Ctrl-C
    (the run records its state there), before a flow starts in this process."""
    from tasks.orchestration import brief_known_errors, shield_temporary_server_from_ctrl_c

    brief_known_errors()
    shield_temporary_server_from_ctrl_c()


def _run_flow(
    config: PipelineConfig,
    steps: list[Step] | None,
    refresh: list[Step],
    runner: tuple[str, str | None] = ("thread", None),
    config_name: str = "defaults",
    nightly: bool = False,
) -> dict[str, Any]:
    from prefect import tags

    from flows.pipeline import task_runner, webvse  # Prefect starts its ephemeral API on first use: only when a flow runs

    _ready_for_a_flow()

    flow_run = webvse.with_options(task_runner=task_runner(*runner))
    print(f"task runner: {type(flow_run.task_runner).__name__}", flush=True)
    started = time.perf_counter()
    with tags(*run_tags(config, config_name)):  # the UI tells runs of different roots and configs apart
        outcome = flow_run(config=config, steps=steps, refresh=refresh, nightly=nightly)
    outcome["seconds"] = time.perf_counter() - started
    return outcome


def _print_outcome(config: PipelineConfig, outcome: dict[str, Any]) -> None:
    import pandas as pd

    from tasks.reporting.evaluation import format_table

    if outcome["results"]:
        split = config.evaluate.split or "test"
        print(f"\n{split} split, protocol {config.evaluate.protocol}:")
        print(format_table(pd.DataFrame(outcome["results"]), label_column="variant"))
    for label, run in outcome["runs"].items():
        print(f"run {label}: {run}")
    report = config.root.runs_dir / REPORT_DIR
    if (report / "results.md").is_file():
        print(f"report (results.md, recall_at_k.png, training.png): {report}")
    promotion = outcome.get("promotion")
    if promotion and "candidate_val_rsum" in promotion:
        verdict = "promoted" if promotion["promoted"] else "not promoted"
        print(f"{verdict}: {promotion['reason']}; model in use: {promotion['in_use']}")
    if outcome.get("index"):
        print("index: " + "\n       ".join(describe_step("index", outcome["index"], config)))
    print(f"pipeline finished in {outcome['seconds']:.1f}s")


def cmd_demo(args: argparse.Namespace) -> None:
    """The offline world -> local Flickr server -> the whole flow -> VSE++ baseline vs Stage I vs Stage II."""
    config = demo_config(str(DataRoot.resolve(args.data_root).root)).model_copy(
        update={"device": args.device, "precision": args.precision}
    )
    if args.nightly:  # as the nightly deployment: a word space that stays put, so the model in use can be continued
        config = config.model_copy(update={"vectors": config.vectors.model_copy(update={"web_tags": False})})
    _print_outcome(config, _run_flow(config, None, args.refresh, config_name="demo", nightly=args.nightly))


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--set wants KEY=VALUE (e.g. train.epochs=5), got {pair!r}")
        values[key] = yaml.safe_load(raw)
    return values


def cmd_run(args: argparse.Namespace) -> None:
    config = _config_from_args(args)
    name = Path(args.config).name if args.config else "defaults"
    _print_outcome(config, _run_flow(config, args.steps, args.refresh, (args.task_runner, args.dask_address), name, args.nightly))


def _config_from_args(
    args: argparse.Namespace, base: PipelineConfig | None = None, flags: dict[str, Any] | None = None
) -> PipelineConfig:
    """The configuration file (or ``base``) with ``--set`` and then the command's own flags applied."""
    overrides = _overrides(args.set) | (flags or {})
    if args.data_root:
        overrides["data_root"] = args.data_root
    if getattr(args, "device", "auto") != "auto":
        overrides["device"] = args.device
    if getattr(args, "precision", "auto") != "auto":
        overrides["precision"] = args.precision
    if base is not None and args.config is None:
        return config_from_dict(merge_dotted(base.model_dump(mode="json"), overrides), "configuration")
    return load_config(args.config, overrides)


def cmd_experiment(args: argparse.Namespace) -> None:
    if args.seeds is not None:
        args.set.append(f"experiment.seeds={args.seeds}")
    if args.losses is not None:
        args.set.append(f"experiment.losses={args.losses}")
    config = _config_from_args(args, base=demo_config())
    from prefect import tags

    from flows.experiment import experiment
    from flows.pipeline import task_runner

    _ready_for_a_flow()

    started = time.perf_counter()
    with tags(*run_tags(config, Path(args.config).name if args.config else "demo")):
        outcome = experiment.with_options(task_runner=task_runner(args.task_runner, args.dask_address))(
            config=config, refresh=args.refresh
        )
    print((Path(outcome["folder"]) / "results.md").read_text(encoding="utf-8"))
    print(f"\nexperiment folder: {outcome['folder']}  ({time.perf_counter() - started:.0f}s)")


def open_index(args: argparse.Namespace) -> Retriever:
    """The index of the chosen run and collection; built first (the flow's index step) when missing or stale."""
    from tasks.reporting.evaluation import run_source
    from tasks.serving.index import index_dir, index_is_current, index_run
    from tasks.serving.retrieval import Retriever

    root = DataRoot.resolve(args.data_root)
    run = _resolve_run(root, args.run) if args.run else index_run(root, None)
    folder = index_dir(run, args.collection, args.folder)
    if not index_is_current(folder, run):
        print(f"building the index of {run.name} ({args.collection}): the flow's index step", flush=True)
        args.data_root = run_source(run).path  # the run's own data root holds the step's cache records
        flags = {"index.run": str(run.absolute()), "index.collection": args.collection, "index.folder": args.folder}
        config = _config_from_args(args, flags={k: v for k, v in flags.items() if v is not None})
        for line in describe_step("index", _run_flow(config, ["index"], [])["index"], config):
            print(line)
    return Retriever.open(folder, args.device)


def _print_answer(answer: Answer, retriever: Retriever) -> None:
    health = retriever.health()
    print(f"{answer.direction} with {health['run']}/{health['stage']} over {answer.total} "
          f"{'images' if answer.direction == 'text-to-images' else 'captions'} ({health['collection']}, {health['search']})")  # fmt: skip
    if answer.unknown_words:
        print(f"not in the model's vocabulary, ignored: {', '.join(answer.unknown_words)}")
    print(f"this query's cosines: min {answer.score_min:.3f}, median {answer.score_median:.3f}, max {answer.score_max:.3f}")
    for hit in answer.hits:
        if answer.direction == "text-to-images":
            label = f"  {hit.labels[0]}" if hit.labels else ""
            print(f"{hit.rank:>4}  {hit.score:6.3f}  {retriever.index.items['path'][retriever.index.row_of[hit.id]]}{label}")
        else:
            print(f"{hit.rank:>4}  {hit.score:6.3f}  {hit.text}  ({hit.split})")


def cmd_search(args: argparse.Namespace) -> None:
    if (args.query is None) == (args.image is None):
        raise InputError("give either a query (text -> images) or --image FILE (image -> captions)")
    image = Path(args.image) if args.image is not None else None
    if image is not None and not image.is_file():
        raise MissingInputError(f"no image file {image}")
    retriever = open_index(args)
    if image is not None:
        answer = retriever.captions_for_upload(image.read_bytes(), image.name, args.k, args.page)
    else:
        answer = retriever.text_to_images(args.query, args.k, args.page)
    _print_answer(answer, retriever)


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from tasks.serving.app import create_app

    retriever = open_index(args)
    health = retriever.health()
    print(f"serving {health['run']}/{health['stage']}: {health['items']} images, {health['captions']} captions "
          f"({health['search']}) on http://{args.host}:{args.port}/  (API: /health, /api/text-to-images, /api/image-to-captions)", flush=True)  # fmt: skip
    uvicorn.run(create_app(retriever), host=args.host, port=args.port, log_level="warning")


def cmd_models(args: argparse.Namespace) -> None:
    from tasks.training.model_registry import NIGHTS_PLOT, model_history, model_in_use

    root = DataRoot.resolve(args.data_root)
    history = model_history(root)
    if history.empty:
        print(f"no promotion decision yet under {root.runs_dir} (a pipeline run ends with one)")
        return
    columns = ["decided_at", "night", "candidate", "candidate_val_rsum", "in_use_val_rsum", "promoted", "test_rsum", "new_photos"]
    print(history[columns].to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"model in use: {model_in_use(root)}")
    print(f"plot: {root.runs_dir / REPORT_DIR / NIGHTS_PLOT}")


def cmd_rollback(args: argparse.Namespace) -> None:
    root = DataRoot.resolve(args.data_root)
    target = _resolve_run(root, args.to) if args.to else None
    from tasks.training.promotion import rollback

    rollback(root, target)


def cmd_flickr_server(args: argparse.Namespace) -> None:
    from tasks.steps.world import Faults, serve_corpus

    faults = Faults(
        error_rate=args.error_rate, throttle_rate=args.throttle_rate, slow_rate=args.slow_rate, slow_seconds=args.slow_seconds,
        truncated_json_rate=args.truncated_json_rate, truncated_image_rate=args.truncated_image_rate,
        unavailable_rate=args.unavailable_rate, seed=args.fault_seed,
    )  # fmt: skip
    serve_corpus(args.corpus, args.port, faults, args.access_log)


def cmd_step(args: argparse.Namespace) -> None:
    """``webvse <step>``: the flow with that step alone; the flags are configuration overrides."""
    step = args.command
    root = DataRoot.resolve(args.data_root)
    if step == "world" and args.next_night:
        from tasks.steps.world import advance_clock

        now = advance_clock(root.world_corpus_dir)
        print(
            f"{root.world_corpus_dir}: it is now {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(now))}; the next crawl sees that day's uploads"
        )
        return
    config = _config_from_args(args, flags=flag_overrides(args))
    outcome = _run_flow(
        config, [step], [step] if args.refresh else [], config_name=Path(args.config).name if args.config else "defaults"
    )
    done = outcome["steps"].get(step)  # absent: a step the configuration does not need
    for line in describe_step(step, done.value if done else None, config):
        print(line)
    if done and done.cached:
        print(f"{step}: served from the cache (same settings, code and inputs as a run before); --refresh runs it again")


def cmd_import_flickr8k(args: argparse.Namespace) -> None:
    root = DataRoot.resolve(args.data_root)
    source = Path(args.source)
    captions = next((source / name for name in ("captions.csv", "captions.txt") if (source / name).is_file()), None)
    if captions is None:
        raise MissingInputError(f"{source} has neither captions.csv (with the standard split) nor captions.txt (Kaggle's format)")
    target = root.root / "flickr8k" / "dataset_flickr8k.json"
    from tasks.data.flickr8k import flickr8k_to_karpathy

    summary = flickr8k_to_karpathy(captions, source / "images", target)
    print(f"{captions}: split from {summary.split_source}")
    print(f"{summary.counts} images -> {target}")
    if summary.unofficial:
        print(f"left out: {summary.unofficial} images in no official split ('extra')")
    if summary.missing_images:
        print(
            f"skipped: {summary.missing_images} listed images without a file in {source / 'images'} (first: {summary.first_missing})"
        )
    print(f"next: webvse keywords --karpathy {target} --image-root {source / 'images'}")


def cmd_import_mirflickr(args: argparse.Namespace) -> None:
    root = DataRoot.resolve(args.data_root)
    target = root.root / "mirflickr" / "corpus"
    from tasks.steps.world import import_mirflickr

    result = import_mirflickr(args.source, target)
    print(f"{result.photos} photos -> {result.table} (images stay in {Path(args.source).resolve() / 'images'})")
    if result.missing_images or result.without_tags:
        print(f"skipped: {result.missing_images} rows without an image file, {result.without_tags} without a tag")
    print("no owner ids, dates or licences in MIRFLICKR: each photo is its own owner (the 5-per-owner rule cannot bind),")
    print("its date is fixed in 2004-2008 from its id, its licence CC BY (see webvse_world/mirflickr.py)")
    print(f"next: set crawl.corpus: {target} in the configuration (configs/flickr8k-mirflickr.yaml does)")

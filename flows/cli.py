"""The ``webvse`` command's parser: one subcommand per pipeline step, and what each does in
:mod:`flows.commands`, imported only once a command runs (``webvse --help`` stays instant).

Expected failures (bad configuration, missing or corrupt files) end with a one-line
``webvse: error: ...`` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from flows.config_flags import add_section_flags
from storage.errors import WebvseError
from tasks.pipeline_config import (
    STEP_SECTIONS,
    STEPS,
    IndexConfig,
    TrainConfig,
)
from tasks.serving.collection import COLLECTIONS
from webvse_model.settings import PRECISIONS, PROTOCOLS

STEP_HELP: dict[str, str] = {
    "world": "generate the offline world: captioned images + a Flickr corpus ('--next-night' reveals a day of uploads)",
    "keywords": "clean captions -> keywords.parquet and dummy tags",
    "crawl": "search Flickr per keyword, filter as the paper, download (resumable; an empty --api-url crawls the local corpus)",
    "features": "pretrained CNN features of the clean images and the kept web photos (cached by content)",
    "vectors": "word vectors: load a pretrained file or train Word2Vec on the captions (and the web tags)",
    "index": "embed a collection (test split, all clean images, web photos or your folder) and the caption bank with a run, for serve/search",
}


def _add_common(p: argparse.ArgumentParser) -> None:
    _add_data_root(p)
    _add_hardware(p)


def _add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="data root (default $WEBVSE_DATA_ROOT or ./webvse-data)")


def _add_hardware(p: argparse.ArgumentParser, precision: bool = True) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    if precision:
        p.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="CNN forward and training: bf16 autocast where the hardware has it natively (auto), or force fp32 / bf16")  # fmt: skip


def _add_index_choice(p: argparse.ArgumentParser) -> None:
    """Which index: a run (default: the model in use) and a collection; the rest from --config/--set."""
    _add_data_root(p)
    _add_hardware(p, precision=False)
    p.add_argument("--run", default=None, help="run id or folder (default: the model in use, else the newest run)")
    p.add_argument("--collection", choices=COLLECTIONS, default=IndexConfig.model_fields["collection"].default,
                   help="test split, all clean images, crawled web photos, or --folder")  # fmt: skip
    p.add_argument("--folder", default=None, help="with --collection folder: your photos")
    p.add_argument("--config", default=None, help="YAML pipeline configuration (its index section: approximate, nprobe ...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. index.nprobe=64")


def _add_task_runner(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task-runner", choices=("thread", "dask"), default="thread", help="Prefect task runner (dask: pip install -e '.[dask]')"
    )
    p.add_argument(
        "--dask-address", default=None, help="with --task-runner dask: the scheduler (tcp://HOST:8786); default: a local cluster"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="webvse", description="Webly supervised joint embeddings for image-text retrieval.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the whole pipeline (Prefect flow) on the embedded offline world")
    _add_common(demo)
    demo.add_argument("--refresh", nargs="+", choices=STEPS, default=[], help="steps to re-run past the cache")
    demo.add_argument("--nightly", action="store_true",
                      help="one night of the night cycle on the demo (word vectors from the captions only; 'webvse world --next-night' brings a day)")  # fmt: skip

    run = sub.add_parser("run", help="run the Prefect flow `webvse` (all steps or --steps) with a YAML config")
    _add_common(run)
    run.add_argument("--config", default=None, help="YAML file of the pipeline configuration (examples in configs/)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. train.epochs=5")
    run.add_argument("--steps", nargs="+", choices=STEPS, default=None, help="run only these steps")
    run.add_argument("--refresh", nargs="+", choices=STEPS, default=[], help="re-run these (and what depends on them)")
    _add_task_runner(run)
    run.add_argument("--nightly", action="store_true",
                     help="one night of the nightly cycle: crawl the new uploads, continue the model in use, promote it only if better")  # fmt: skip

    experiment = sub.add_parser(
        "experiment", help="the paper's grid: {VSE, VSE++} x {baseline, Stage I, Stage II +- curriculum} x seeds"
    )
    _add_common(experiment)
    experiment.add_argument(
        "--config", default=None, help="YAML pipeline configuration (default: the demo sizes on the offline world)"
    )
    experiment.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. train.epochs=5"
    )
    experiment.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default 0 1 2)")
    experiment.add_argument("--losses", nargs="+", choices=("vse", "vse++"), default=None)
    experiment.add_argument("--refresh", nargs="+", choices=STEPS, default=[], help="re-run these (and what depends on them)")
    _add_task_runner(experiment)

    search = sub.add_parser("search", help="the command-line client of the index: text -> images, or --image FILE -> captions")
    _add_index_choice(search)
    search.add_argument("query", nargs="?", default=None, help="words to find images for")
    search.add_argument("--image", default=None, help="an image file to find captions for (instead of a query)")
    search.add_argument("-k", type=int, default=5, help="hits per page")
    search.add_argument("--page", type=int, default=1, help="which page of k hits")

    serve = sub.add_parser("serve", help="HTTP API + web page over a run's index (built first when missing or stale)")
    _add_index_choice(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only; 0.0.0.0 exposes it)")
    serve.add_argument("--port", type=int, default=8000)

    train = sub.add_parser("train", help="train on precomputed features (VSE++ precomp folder)")
    _add_common(train)
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--precomp", help="VSE++ precomp folder: {train,dev,test}_ims.npy and _caps.txt")
    source.add_argument("--parquet-root", help="a webvse data root with clean/*.parquet and features/<model>/ shards")
    train.add_argument("--feature-model", default="", help="with --parquet-root: the features/<model> folder to use")
    train.add_argument("--val-split", default=None, help="validation split (default: dev for precomp, val for parquet)")
    train.add_argument("--run-id", default=None, help="run folder name under <data root>/runs (default: a timestamp)")
    train.add_argument("--no-resume", action="store_true", help="start afresh even if the run has checkpoints")
    train.add_argument("--captions-per-image", type=int, default=5)
    add_section_flags(train, {"train": TrainConfig}, skip=("baseline",))

    evaluate = sub.add_parser("evaluate", help="evaluate a run's best checkpoints")
    _add_common(evaluate)
    evaluate.add_argument("--run", default=None, help="run id or folder (default: the latest run)")
    evaluate.add_argument("--split", default=None, help="split to evaluate (default: the run's test split)")
    evaluate.add_argument("--protocol", choices=PROTOCOLS, default="all")

    models = sub.add_parser("models", help="the model in use and every promotion decision (runs/models.parquet)")
    _add_data_root(models)
    back = sub.add_parser("rollback", help="put back the model in use before the current one (or --to RUN)")
    _add_data_root(back)
    back.add_argument("--to", default=None, help="run id or folder to put in use instead")

    server = sub.add_parser("flickr-server", help="serve a corpus through a Flickr-compatible API on 127.0.0.1")
    server.add_argument("--corpus", required=True, help="corpus folder (photos.parquet + images/), e.g. webvse-data/world/corpus")
    server.add_argument("--port", type=int, default=8399)
    server.add_argument("--error-rate", type=float, default=0.0, help="share of 500/503 answers")
    server.add_argument("--throttle-rate", type=float, default=0.0, help="share of 429 answers with Retry-After")
    server.add_argument("--slow-rate", type=float, default=0.0, help="share of answers delayed by --slow-seconds")
    server.add_argument("--slow-seconds", type=float, default=0.5)
    server.add_argument("--truncated-json-rate", type=float, default=0.0)
    server.add_argument("--truncated-image-rate", type=float, default=0.0)
    server.add_argument("--unavailable-rate", type=float, default=0.0, help="share of API answers stat=fail code 105 (temporary)")
    server.add_argument("--fault-seed", type=int, default=0)
    server.add_argument("--access-log", action="store_true", help="print each request's method and path (never the query)")

    for step, sections in STEP_SECTIONS.items():
        command = sub.add_parser(
            step,
            help=STEP_HELP[step],
            description=f"{STEP_HELP[step]}. The same as `webvse run --steps {step}`: cached, retried.",
        )
        _add_data_root(command)
        if step in ("features", "index"):
            _add_hardware(command, precision=step == "features")  # an index embeds at the precision of the run's features
        command.add_argument(
            "--config", default=None, help="YAML file of the pipeline configuration; the flags below override it"
        )
        command.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE", help="override any field, e.g. crawl.per_page=100"
        )
        command.add_argument("--refresh", action="store_true", help="run the step again past its cache")
        if step == "world":
            command.add_argument(
                "--next-night",
                action="store_true",
                help="move the existing corpus's clock on a day: the next night's uploads appear",
            )
        add_section_flags(command, sections)

    flickr8k = sub.add_parser(
        "import-flickr8k", help="Flickr8k captions -> a Karpathy split file (the file's split, else a fixed 80/10/10)"
    )
    _add_data_root(flickr8k)
    flickr8k.add_argument("--source", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k-1k"),
                          help="folder with captions.csv (standard split) or captions.txt, and images/ (default: ../shared/data/flickr8k-1k)")  # fmt: skip

    mirflickr = sub.add_parser(
        "import-mirflickr", help="MIRFLICKR photos + real Flickr tags -> a corpus for the local Flickr server"
    )
    _add_data_root(mirflickr)
    mirflickr.add_argument("--source", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mirflickr"),
                           help="folder with tags.csv and images/ (default: ../shared/data/mirflickr)")  # fmt: skip

    return parser


def temporary_prefect_server_defaults() -> None:
    """Settings of the temporary Prefect server a run starts, unless the user chose otherwise
    (read from the environment when Prefect is first imported and by the server process).

    * No usage telemetry: it is on by default, and offline it prints an ERROR line in every run.
    * 120 s to start instead of Prefect's 20: a new server migrates its fresh SQLite database
      first, which took 18 s on a busy 2-core machine (and then every run and test failed with
      "Timed out while attempting to connect to ephemeral Prefect API server")."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    temporary_prefect_server_defaults()
    from flows import commands  # torch, Prefect, pandas: loaded for a command, never for --help

    handlers = {
        "train": commands.cmd_train, "evaluate": commands.cmd_evaluate, "demo": commands.cmd_demo,
        "flickr-server": commands.cmd_flickr_server, "import-flickr8k": commands.cmd_import_flickr8k,
        "import-mirflickr": commands.cmd_import_mirflickr, "run": commands.cmd_run, "search": commands.cmd_search,
        "serve": commands.cmd_serve, "experiment": commands.cmd_experiment, "models": commands.cmd_models,
        "rollback": commands.cmd_rollback,
    } | dict.fromkeys(STEP_SECTIONS, commands.cmd_step)  # fmt: skip
    try:
        handlers[args.command](args)
    except WebvseError as exc:  # a known, explained failure: one line; anything else is a bug and keeps its traceback
        print(f"webvse: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("webvse: interrupted; the same command resumes where it stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `webvse search ... | head`: the reader has what it wanted; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush must not fail again
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Prefect flow `webvse` end to end on a tiny offline world: outputs, cache, refresh, retries.

Flows run in-process against Prefect's ephemeral API (a private PREFECT_HOME, see
conftest). Task states are read back from the API, so "served from cache" means
Prefect reported ``Cached`` for the task run and never ran its body.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from gensim.models import KeyedVectors
from pipeline_support import run_counts, task_states, tiny_config

from flows.pipeline import task_runner, webvse
from storage.errors import InputError
from storage.layout import VECTORS_FILE
from storage.tables import FEATURE_FAILURES, KEYWORDS, WEB_PHOTOS, feature_schema, read_shards, read_table, write_table
from tasks.imaging.features import features_id, images_to_encode
from tasks.orchestration import StepPlan
from tasks.pipeline_config import STEPS, load_config
from tasks.reporting.evaluation import embedded_stages
from webvse_model.cnn import encoder_spec
from webvse_model.reference_metrics import reference_ranks
from webvse_model.settings import ConfigError
from webvse_world.flickr_server import FlickrServer

EVERY_TASK = set(STEPS) | {"world-corpus"}  # the world step is two tasks: its corpus renders beside the keywords


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory):
    config = tiny_config(tmp_path_factory.mktemp("pipeline") / "data")
    state = webvse(config=config, return_state=True)
    assert state.is_completed(), state.message
    return config, state


@pytest.mark.slow
def test_first_run_runs_every_step_and_writes_the_report(first_run) -> None:
    config, state = first_run
    states = task_states(state.state_details.flow_run_id)
    assert set(states) == EVERY_TASK
    assert all(s == "Completed" for names in states.values() for s in names), states
    assert len(states["stage1"]) == 2  # the baseline and the webly Stage I
    outcome = state.result()
    table = pd.DataFrame(outcome["results"])
    assert list(table["variant"]) == ["baseline/stage1", "webly/stage1", "webly/stage2"]
    # the reported numbers are those of the trained checkpoints, ranked again by the per-query loop reference
    for label, run in outcome["runs"].items():
        for embedded in embedded_stages(run, "test"):
            i2t, t2i = reference_ranks(embedded.images.numpy(), embedded.captions.numpy(), embedded.captions_per_image)
            row = table.set_index("variant").loc[f"{label}/{embedded.stage}"]
            for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
                assert [row[f"{direction}_r{k}"] for k in (1, 5, 10)] == pytest.approx(
                    [100 * np.mean(ranks < k) for k in (1, 5, 10)]
                )
                assert row[f"{direction}_medr"] == np.floor(np.median(ranks)) + 1
    report = config.root.runs_dir / "report"
    for png in ("recall_at_k.png", "training.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (report / "results.md").read_text()
    assert "ground truth at rank" in markdown and "webly/stage2" in markdown
    for run in outcome["runs"].values():
        assert (Path(run) / "stage1" / "checkpoints.json").is_file() and (Path(run) / "training.png").is_file()
    assert (Path(outcome["runs"]["webly"]) / "stage2" / "checkpoints.json").is_file()


@pytest.mark.slow
def test_second_run_executes_no_task_body(first_run) -> None:
    config, state = first_run
    again = webvse(config=config, return_state=True)
    states = task_states(again.state_details.flow_run_id)
    assert set(states) == EVERY_TASK
    not_cached = {name: s for name, s in states.items() if any(x != "Cached" for x in s)}
    assert not not_cached, f"ran again instead of the cache: {not_cached}"
    assert again.result()["results"] == state.result()["results"]


def _normalised(path: Path, root: Path) -> str:
    """A step output as comparable content: a table's rows (sorted; its data root's path, the local
    Flickr server's port and the crawl's wall-clock decision times left out); a folder's or another
    file's bytes."""
    import json

    from storage.fingerprint import fingerprint

    parts = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]  # feature shards: one table, any file names
    if parts and all(p.suffix == ".parquet" for p in parts):
        table = pd.concat([pd.read_parquet(p) for p in parts]).drop(columns=["fetched_at"], errors="ignore")
        exact = {"default": lambda v: v.tolist() if hasattr(v, "tolist") else str(v), "sort_keys": True}
        rows = (json.dumps(row, **exact).replace(str(root), "<root>") for row in table.to_dict("records"))
        return "\n".join(sorted(re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", row) for row in rows))
    return fingerprint([path])


def _step_outputs(root: Path) -> dict[str, dict[str, str]]:
    features = next((root / "features").glob("efficientnet-lite0-*"))
    outputs = {
        "world": [root / "world" / "clean" / "dataset_world.json", root / "world" / "corpus" / "photos.parquet", root / "world" / "corpus" / "images"],
        "keywords": [root / "clean" / "images.parquet", root / "clean" / "captions.parquet", root / "keywords.parquet"],
        "crawl": [root / "web" / "photos.parquet", root / "web" / "images"],
        "features": [features],
        "vectors": [root / "vectors" / VECTORS_FILE],
    }  # fmt: skip
    return {step: {p.name: _normalised(p, root) for p in paths} for step, paths in outputs.items()}


@pytest.mark.slow
def test_each_step_command_is_the_flow_s_step_and_a_second_call_is_cached(
    first_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`webvse world|keywords|crawl|features|vectors` run the flow's own step (issue 15): on a
    second data root they write what the whole flow wrote on the first, and run again they are
    served from the cache. Wrong version: a command that calls the step's functions itself
    (the old `webvse vectors` left out the web tags and so wrote other vectors)."""
    from flows.cli import main

    config, _ = first_run
    settings = config.model_dump(mode="json", exclude={"data_root"})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(settings))
    root = tmp_path / "by-hand"
    data_steps = ["world", "keywords", "crawl", "features", "vectors"]
    for step in data_steps:
        assert main([step, "--config", str(tmp_path / "tiny.yaml"), "--data-root", str(root)]) == 0, step
        assert "served from the cache" not in capsys.readouterr().out
    by_flow, by_hand = _step_outputs(config.root.root), _step_outputs(root)
    for step in data_steps:
        assert by_hand[step] == by_flow[step], step
    for step in data_steps:
        assert main([step, "--config", str(tmp_path / "tiny.yaml"), "--data-root", str(root)]) == 0, step
        assert f"{step}: served from the cache" in capsys.readouterr().out


@pytest.mark.slow
def test_another_configuration_s_outputs_are_never_served_from_the_cache(first_run) -> None:
    """The repro of a silent wrong result: config A, then config B overwrites the vectors
    (another ``vectors.dim``), then A again. A's cache record must not vouch for B's file."""
    config, state = first_run
    other = config.model_copy(update={"vectors": config.vectors.model_copy(update={"dim": 16})})
    data_steps = ["world", "keywords", "crawl", "features", "vectors"]
    assert webvse(config=other, steps=data_steps, return_state=True).is_completed()
    assert KeyedVectors.load_word2vec_format(str(config.root.vectors_dir / VECTORS_FILE), binary=True).vector_size == 16

    again = webvse(config=config, return_state=True)
    states = task_states(again.state_details.flow_run_id)
    assert states["vectors"] == ["Cached", "Completed"], states  # the record no longer matches the file: run again
    assert states["keywords"] == ["Cached"] and states["stage1"] == ["Cached", "Cached"], states  # same bytes as A's
    assert KeyedVectors.load_word2vec_format(str(config.root.vectors_dir / VECTORS_FILE), binary=True).vector_size == 32
    assert again.result()["results"] == state.result()["results"]


@pytest.mark.slow
def test_a_changed_keyword_reruns_the_crawl_and_what_follows_but_not_keywords(first_run) -> None:
    config, _ = first_run
    root = config.root
    keywords = read_table(root.keywords, KEYWORDS)
    crawled = config.crawl.max_keywords
    swapped_in = keywords.loc[keywords["rank"] == crawled + 1, "keyword"].item()  # a keyword the crawl never searched
    keywords.loc[keywords["rank"] == 1, "keyword"] = swapped_in
    write_table(root.keywords, keywords, KEYWORDS)
    before = set(read_table(root.web_photos, WEB_PHOTOS)["photo_id"])

    state = webvse(config=config, return_state=True)
    assert state.is_completed(), state.message
    states = task_states(state.state_details.flow_run_id)
    assert states["world"] == ["Cached"] and states["keywords"] == ["Cached"], states
    for name in ("crawl", "features", "vectors", "stage1", "stage2", "evaluate"):
        assert all(s == "Completed" for s in states[name]), (name, states)
    photos = read_table(root.web_photos, WEB_PHOTOS)
    assert swapped_in in {k for ks in photos["keywords"] for k in ks}
    assert set(photos["photo_id"]) > before  # the new keyword found photos the old list had not


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _crawl_awaiting_retry() -> bool:
    """A crawl task run of this test session is in Prefect's AwaitingRetry state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName, TaskRunFilterState, TaskRunFilterStateName

    waiting = TaskRunFilterState(name=TaskRunFilterStateName(any_=["AwaitingRetry"]))
    with get_client(sync_client=True) as client:
        return bool(
            client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="crawl"), state=waiting), limit=1)
        )


@pytest.mark.slow
def test_the_crawl_completes_through_a_task_retry_when_flickr_is_down_at_first(tmp_path: Path) -> None:
    """Attempt 1 meets a closed port (every request fails); the server comes up; attempt 2 crawls."""
    port = _free_port()
    config = tiny_config(
        tmp_path / "data",
        crawl={"api_url": f"http://127.0.0.1:{port}/services/rest/", "request_attempts": 1},
        retries={"crawl": 2, "crawl_delay_seconds": 1},
    )
    servers: list[FlickrServer] = []

    def bring_server_up_after_the_first_attempt_failed() -> None:
        while not _crawl_awaiting_retry():  # the event itself: Prefect holds the failed attempt 1 for its retry
            time.sleep(0.05)
        servers.append(FlickrServer(config.root.world_corpus_dir, port=port).start())

    watcher = threading.Thread(target=bring_server_up_after_the_first_attempt_failed, daemon=True)
    watcher.start()
    try:
        state = webvse(config=config, steps=["world", "keywords", "crawl"], return_state=True)
    finally:
        watcher.join(timeout=5)
        for server in servers:
            server.stop()
    assert state.is_completed(), state.message
    assert run_counts(state.state_details.flow_run_id)["crawl"] == 2
    photos = read_table(config.root.web_photos, WEB_PHOTOS)
    assert (photos["status"] == "kept").sum() > 0


def test_refresh_reruns_the_step_and_what_depends_on_it() -> None:
    plan = StepPlan.make(None, ["crawl"])
    assert plan.selected == set(STEPS)
    assert plan.refreshed == {"crawl", "features", "vectors", "stage1", "stage2", "evaluate", "promote", "index"}
    assert StepPlan.make(["evaluate"], ["evaluate"]).refreshed == {
        "evaluate",
        "promote",
        "index",
    }  # promote, index: only where selected
    with pytest.raises(ValueError, match="unknown step"):
        StepPlan.make(["crawll"])


def test_a_bad_config_value_names_its_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 0\ncrawl:\n  per_pag: 10\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "train.epochs" in str(caught.value) and "crawl.per_pag" in str(caught.value)
    assert load_config(None, {"train.epochs": 3}).train.epochs == 3


def test_the_dask_deployment_entrypoint_is_the_same_flow_on_the_configured_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment cannot hand its flow a task runner: flows/dask_pipeline.py is `webvse` with
    `with_options(task_runner=DaskTaskRunner(address))`, the scheduler from its job variables."""
    import importlib

    import flows.dask_pipeline

    monkeypatch.setenv("WEBVSE_DASK_ADDRESS", "tcp://scheduler.example:8786")
    on_dask = importlib.reload(flows.dask_pipeline).webvse
    assert (
        type(on_dask.task_runner).__name__ == "DaskTaskRunner" and on_dask.task_runner.address == "tcp://scheduler.example:8786"
    )
    assert (on_dask.name, on_dask.fn) == (webvse.name, webvse.fn)
    assert type(webvse.task_runner).__name__ == "ThreadPoolTaskRunner"
    with pytest.raises(InputError, match="task runner must be 'thread' or 'dask'"):
        task_runner("ray")


@pytest.mark.slow
def test_feature_shards_run_as_parallel_tasks_on_a_dask_task_runner(tmp_path: Path) -> None:
    """`webvse run --task-runner dask`: the images split over 2 shard tasks on a local Dask cluster."""
    config = tiny_config(tmp_path / "data", features={"parallel_shards": 2})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        "--config",
        str(path),
        "--task-runner",
        "dask",
        "--steps",
        "world",
        "keywords",
        "crawl",
        "features",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "task runner: DaskTaskRunner" in output
    assert len(re.findall(r"Task run 'features-shard-\w+' - Finished in state Completed", output)) == 2
    # both shards decoded in their own thread inside a Dask worker process (a daemon: it may start threads, not processes)
    assert len(re.findall(r"features: \d+ computed, .*decode threads: 1\)", output)) == 2
    root = config.root
    images = images_to_encode(root)
    spec = encoder_spec(config.features.encoder)
    folder = root.features_dir(features_id(config.features.encoder, config.device, config.precision))
    encoded = read_shards(folder, feature_schema(spec.dim)).column("sha256").to_pylist()
    assert sorted(encoded) == sorted(images["sha256"])  # every image once, none twice


@pytest.mark.slow
def test_a_tiny_experiment_grid_reports_real_measurements(first_run) -> None:
    from flows.experiment import experiment

    config, _ = first_run
    grid = config.model_copy(update={"experiment": config.experiment.model_copy(update={"seeds": [0, 1]})})
    outcome = experiment(config=grid)
    summary = pd.DataFrame(outcome["summary"])
    assert len(summary) == 2 * 4 and set(summary["seeds"]) == {2}  # {VSE, VSE++} x 4 variants, 2 seeds each
    assert list(summary["variant"][:4]) == ["baseline", "stage1", "stage2-nocurriculum", "stage2-curriculum"]
    for direction in ("i2t", "t2i"):  # means over seeds keep R@1 <= R@5 <= R@10
        recalls = summary[[f"{direction}_r{k}" for k in (1, 5, 10)]].to_numpy()
        assert np.isfinite(recalls).all() and (np.diff(recalls, axis=1) >= 0).all()
    assert (summary[["i2t_medr", "t2i_medr"]] >= 1).all().all()
    assert np.isfinite(summary[[c for c in summary.columns if c.endswith("_std")]].to_numpy(dtype=float)).all()
    for group in ("frequent", "rare"):
        assert summary[f"t2i_r10_{group}"].between(0, 100).all()
    cells = pd.read_parquet(Path(outcome["folder"]) / "cells.parquet")
    assert len(cells) == 16 and cells.groupby(["loss", "variant"]).size().eq(2).all()
    # the two Stage II variants of a (loss, seed) fork one Stage I run; baselines are separate runs
    webly = cells[cells["variant"] == "stage1"].set_index(["loss", "seed"])["run_dir"]
    for variant in ("stage2-nocurriculum", "stage2-curriculum"):
        forks = cells[cells["variant"] == variant].set_index(["loss", "seed"])["run_dir"]
        assert all(
            Path(forks[k], "stage1", "checkpoints.json").read_bytes() == Path(webly[k], "stage1", "checkpoints.json").read_bytes()
            for k in forks.index
        )
    markdown = (Path(outcome["folder"]) / "results.md").read_text()
    assert "± " in markdown and "Beyond the seed spread" in markdown
    for question in ("+ Stage II, curriculum against its own Stage I", "Stage II with the curriculum against without it"):
        line = next(line for line in markdown.splitlines() if line.startswith(f"- {question}: "))
        assert "VSE paired by seed rsum" in line and "VSE++ paired by seed rsum" in line and "of 2 seeds" in line
    assert (Path(outcome["folder"]) / "r1.png").read_bytes()[:4] == b"\x89PNG"


def test_shipped_configurations_are_valid() -> None:
    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        assert load_config(path).data_root, path


@pytest.mark.slow
def test_search_is_the_command_line_client_of_the_flow_s_index(first_run, capsys: pytest.CaptureFixture[str]) -> None:
    """The flow's last step indexed the model in use; `webvse search` reads that index (it does
    not build one) and prints hits best first with the query's score range."""
    from flows.cli import main

    config, state = first_run
    outcome = state.result()
    assert outcome["index"]["run_dir"] == outcome["runs"]["webly"] and outcome["index"]["stage"] == "stage2"
    root = str(config.root.root)
    assert main(["search", "a red dog on the beach", "-k", "4", "--data-root", root, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "building the index" not in out and "this query's cosines: min" in out
    hits = [line.split() for line in out.splitlines() if re.match(r"^\s+\d+\s+-?\d\.\d{3}\s", line)]
    assert [int(h[0]) for h in hits] == [1, 2, 3, 4]
    scores = [float(h[1]) for h in hits]
    assert scores == sorted(scores, reverse=True) and all(Path(h[2]).is_file() for h in hits)
    assert main(["search", "xyzzy plugh", "--data-root", root]) == 2
    assert (
        "none of its words (xyzzy, plugh)" in capsys.readouterr().err
    )  # arbitrary images for an all-<unk> caption would look like an answer


@pytest.mark.slow
def test_an_unreadable_image_is_skipped_and_reported_and_a_copied_root_evaluates_its_own_data(tmp_path: Path) -> None:
    import json
    import shutil

    config = tiny_config(tmp_path / "data", retries={"other": 1, "other_delay_seconds": 30})
    assert webvse(config=config, steps=["world"], return_state=True).is_completed()
    dataset = json.loads((config.root.world_clean_dir / "dataset_world.json").read_text())
    broken = next(image for image in dataset["images"] if image["split"] == "train")
    broken_path = config.root.world_clean_dir / broken["filepath"] / broken["filename"]
    broken_path.write_bytes(b"<html>not a photo</html>")

    state = webvse(config=config, return_state=True)
    assert state.is_completed(), state.message
    failures = read_table(
        config.root.feature_failures(features_id(config.features.encoder, config.device, config.precision)), FEATURE_FAILURES
    )
    assert [Path(p).name for p in failures["path"]] == [broken["filename"]]
    first = state.result()
    for run in first["runs"].values():  # trained on the other images; the run folder says its data path relatively
        assert json.loads((Path(run) / "config.json").read_text())["data"]["path"] == "../.."

    # a copied root is whole: with the original moved away, the copy evaluates from its own files
    copy = tmp_path / "copy"
    shutil.copytree(config.root.root, copy)
    config.root.root.rename(tmp_path / "moved-away")
    assert not any(Path(run).is_absolute() for run in json.loads((copy / "runs" / "latest.json").read_text()).values())
    copied = config.model_copy(update={"data_root": str(copy)})
    again = webvse(config=copied, steps=["evaluate"], refresh=["evaluate"], return_state=True)
    assert again.is_completed(), again.message
    assert again.result()["results"] == first["results"]
    assert not (tmp_path / "data").exists()  # nothing was written back to the original's path

    # asked to fail instead: one clear error, and no retry of a deterministic failure (retries.other = 1)
    strict = copied.model_copy(update={"features": copied.features.model_copy(update={"on_bad_image": "fail"})})
    failed = webvse(config=strict, steps=["features"], return_state=True)
    assert failed.is_failed()
    with pytest.raises(InputError, match=r"1 image\(s\) could not be read: .*failures\.parquet.*features\.on_bad_image: skip"):
        failed.result()
    assert run_counts(failed.state_details.flow_run_id)["features"] == 1

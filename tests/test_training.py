"""Training: separable data is learned, both stages run, resume after SIGKILL is exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from storage.checkpoints import CheckpointError, CheckpointStore
from storage.errors import InputError
from tasks.data.training_data import DataSource
from tasks.orchestration import concurrently
from tasks.reporting.evaluation import evaluate_run
from tasks.training.core_share import CoreShare
from tasks.training.runs import RunSettings, train_run
from webvse_model.encoders import seeded_model
from webvse_model.settings import ConfigError, CurriculumSchedule, ModelConfig, StageConfig, stage2_defaults
from webvse_model.train import load_model

SMALL = dict(embed_dim=128, hidden_dim=128, gru_hidden=128, word_dim=64, vocab_min_count=1)
FAST = StageConfig(epochs=10, lr=1e-3, lr_decay_every=100, batch_size=64)
QUIET = dict(log=lambda message: None)


def test_separable_data_reaches_high_recall_both_ways(tiny_precomp: Path, tmp_path: Path) -> None:
    settings = RunSettings(stage1=replace(FAST, lambda_tag=0.0), **SMALL)
    train_run(tmp_path / "run", DataSource(str(tiny_precomp)), settings, **QUIET)
    table = evaluate_run(tmp_path / "run")
    row = table.iloc[0]
    assert row["i2t_r1"] >= 90 and row["t2i_r1"] >= 90, row.to_dict()
    metrics = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert metrics["epoch"].tolist() == list(range(1, 11))
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]


def test_tag_loss_and_stage2_train_and_are_evaluated(tiny_precomp: Path, tmp_path: Path) -> None:
    stage1 = replace(FAST, epochs=3)
    settings = RunSettings(stage1=stage1, stage2=stage2_defaults(stage1, 3), **SMALL)
    results = train_run(tmp_path / "run", DataSource(str(tiny_precomp)), settings, **QUIET)
    assert set(results) == {"stage1", "stage2"}
    assert results["stage2"].history[0].lr == pytest.approx(stage1.lr / 10)
    table = evaluate_run(tmp_path / "run")
    assert table["stage"].tolist() == ["stage1", "stage2"]
    # Stage II changed the image branch (it trains L_IT on web pairs), not the sentence branch
    m1 = load_model(CheckpointStore(tmp_path / "run" / "stage1"), "best")
    m2 = load_model(CheckpointStore(tmp_path / "run" / "stage2"), "best")
    assert not torch.equal(m1.image.net[0].weight, m2.image.net[0].weight)
    assert torch.equal(m1.sentence.fc.weight, m2.sentence.fc.weight)


def test_a_frozen_branch_keeps_its_weights_through_a_stage(tiny_precomp: Path, tmp_path: Path) -> None:
    stage1 = replace(FAST, epochs=2)
    stage2 = replace(stage2_defaults(stage1, 2), frozen=("tag",))
    train_run(tmp_path / "run", DataSource(str(tiny_precomp)), RunSettings(stage1=stage1, stage2=stage2, **SMALL), **QUIET)
    m1 = load_model(CheckpointStore(tmp_path / "run" / "stage1"), "best")
    m2 = load_model(CheckpointStore(tmp_path / "run" / "stage2"), "best")
    assert all(torch.equal(a, b) for a, b in zip(m1.tag.parameters(), m2.tag.parameters()))
    assert not torch.equal(m1.image.net[0].weight, m2.image.net[0].weight)
    with pytest.raises(ConfigError, match="frozen"):
        StageConfig(frozen=("text",))
    assert StageConfig.from_dict({**stage2.to_dict(), "frozen": ["tag"]}).frozen == ("tag",)


def test_curriculum_grows_from_frequent_to_rare() -> None:
    ranks = torch.arange(1, 11).repeat_interleave(3).numpy()
    schedule = CurriculumSchedule(start_fraction=0.3, full_at_epoch=2)
    sizes = [len(schedule.pool(ranks, epoch)) for epoch in range(4)]
    assert sizes == [9, 21, 30, 30]
    assert ranks[schedule.pool(ranks, 0)].max() == 3
    assert len(CurriculumSchedule(enabled=False).pool(ranks, 0)) == 30


def test_bad_stage_settings_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"stage1\.lr must be a positive number"):
        StageConfig(lr=-1)
    with pytest.raises(ConfigError, match=r"stage1\.loss must be one of"):
        StageConfig(loss="hinge")
    with pytest.raises(ConfigError, match=r"batch_size must be >= 2"):
        StageConfig(batch_size=1)
    with pytest.raises(ConfigError, match="unknown settings"):
        StageConfig.from_dict({"name": "stage1", "learning_rate": 1})


def test_stage2_without_web_pairs_is_a_clear_error(tiny_precomp: Path, tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    for f in tiny_precomp.iterdir():
        if not f.name.startswith("web_"):
            (tmp_path / "p" / f.name).write_bytes(f.read_bytes())
    settings = RunSettings(stage1=replace(FAST, epochs=1), stage2=stage2_defaults(FAST, 1), **SMALL)
    with pytest.raises(ConfigError, match="no web pairs"):
        train_run(tmp_path / "run", DataSource(str(tmp_path / "p")), settings, **QUIET)


def test_corrupt_checkpoint_is_refused_by_name(tiny_precomp: Path, tmp_path: Path) -> None:
    settings = RunSettings(stage1=replace(FAST, epochs=1), **SMALL)
    train_run(tmp_path / "run", DataSource(str(tiny_precomp)), settings, **QUIET)
    best = tmp_path / "run" / "stage1" / "best.pt"
    data = bytearray(best.read_bytes())
    data[len(data) // 2] ^= 0xFF
    best.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"best\.pt is corrupt"):
        evaluate_run(tmp_path / "run")


def _train_command(precomp: Path, root: Path, run_id: str) -> list[str]:
    return [
        sys.executable, "-m", "flows.cli", "train", "--precomp", str(precomp), "--data-root", str(root),
        "--run-id", run_id, "--epochs", "6", "--stage2-epochs", "0", "--lr", "1e-3", "--batch-size", "64", "--lambda-tag", "1",
        "--embed-dim", "64", "--hidden-dim", "64", "--gru-hidden", "64", "--word-dim", "32", "--device", "cpu",
    ]  # fmt: skip


def _committed_epoch(run: Path) -> int:
    manifest = run / "stage1" / "checkpoints.json"
    try:
        return int(json.loads(manifest.read_text())["checkpoints"]["last"]["meta"]["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_precomp: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_command(tiny_precomp, tmp_path, "straight"), check=True, env=env, capture_output=True)

    killed = subprocess.Popen(
        _train_command(tiny_precomp, tmp_path, "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    run = tmp_path / "runs" / "killed"
    deadline = time.monotonic() + 120
    while _committed_epoch(run) < 2 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert killed.poll() is None, "training ended before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    stopped_at = _committed_epoch(run)
    assert 2 <= stopped_at < 6

    resumed = subprocess.run(
        _train_command(tiny_precomp, tmp_path, "killed"), env=env, capture_output=True, text=True, check=True
    )
    assert f"resuming at epoch {stopped_at + 1}/6" in resumed.stdout
    assert not list((run / "stage1").glob(".*.tmp")), "a killed write left a temporary file behind"

    straight = pd.read_parquet(tmp_path / "runs" / "straight" / "metrics.parquet")
    again = pd.read_parquet(run / "metrics.parquet")
    assert again["epoch"].tolist() == list(range(1, 7))
    for column in ("train_loss", "rsum"):
        assert again[column].tolist() == pytest.approx(straight[column].tolist(), rel=1e-6, abs=1e-9), column


def test_a_stage_says_how_long_it_will_take_before_its_first_epoch_ends(tiny_precomp: Path, tmp_path: Path) -> None:
    import math
    import re

    lines: list[str] = []
    settings = RunSettings(stage1=replace(FAST, epochs=3, batch_size=32), **SMALL)
    train_run(tmp_path / "run", DataSource(str(tiny_precomp)), settings, log=lines.append)
    estimates = [i for i, line in enumerate(lines) if "of training for 3 epoch(s)" in line]
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("stage1 epoch 1/3"))
    assert len(estimates) == 1 and estimates[0] < first_epoch, lines
    steps = int(re.search(r"x (\d+) steps/epoch", lines[estimates[0]]).group(1))
    assert steps == math.ceil(600 * 5 / 32)  # every caption of the 600 training images once per epoch, 32 a batch


def test_the_precision_setting_reaches_the_training_steps(tiny_precomp: Path, tmp_path: Path) -> None:
    """Same seed, same batches: bf16 autocast changes the arithmetic (other losses), not the learning."""
    losses = {}
    for precision in ("fp32", "bf16"):
        settings = RunSettings(stage1=replace(FAST, epochs=2, lambda_tag=0.0), precision=precision, device="cpu", **SMALL)
        train_run(tmp_path / precision, DataSource(str(tiny_precomp)), settings, **QUIET)
        losses[precision] = pd.read_parquet(tmp_path / precision / "metrics.parquet")["train_loss"].to_numpy()
    assert (losses["fp32"] != losses["bf16"]).all()  # bf16 did run: the same steps give other numbers
    assert abs(losses["bf16"] - losses["fp32"]).max() < 0.05 * losses["fp32"].max()  # and nearly the same ones


# ---------------------------------------------------------------- Stage I runs side by side
def test_initial_weights_depend_on_the_seed_alone_also_when_runs_start_at_once() -> None:
    config = ModelConfig(image_dim=24, vocab_size=30, tag_dim=12, embed_dim=16, hidden_dim=16, word_dim=8, gru_hidden=16)
    alone = seeded_model(config, seed=7).state_dict()
    torch.manual_seed(12345)  # a global RNG state no model build would leave
    rng = torch.get_rng_state()
    start = threading.Barrier(4)

    def build(seed: int) -> dict[str, torch.Tensor]:
        start.wait()  # all four seed and draw at the same moment
        return seeded_model(config, seed).state_dict()

    with ThreadPoolExecutor(4) as pool:
        built = list(pool.map(build, [7, 7, 8, 7]))
    for i in (0, 1, 3):
        assert all(torch.equal(alone[k], built[i][k]) for k in alone)
    assert not torch.equal(alone["image.net.0.weight"], built[2]["image.net.0.weight"])  # another seed, other weights
    torch.set_rng_state(rng)
    seeded_model(config, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is given back as it was


def test_runs_computing_at_once_share_the_cores_and_a_run_left_alone_gets_them_back() -> None:
    share, before = CoreShare(cores=4), torch.get_num_threads()
    both_in, both_read, first_left = threading.Barrier(2), threading.Barrier(2), threading.Event()
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def run(name: str) -> None:
        outside = torch.get_num_threads()
        with share.member():
            both_in.wait()
            share.rebalance()  # what a run does before its first epoch and after each
            seen[name].append(torch.get_num_threads())  # two runs: 2 threads each
            both_read.wait()
            if name == "a":
                first_left.wait()
                share.rebalance()
                seen[name].append(torch.get_num_threads())  # alone now: all 4
        if name == "b":
            first_left.set()
        else:  # the last to leave puts back the count it found
            seen[name].append(torch.get_num_threads() - outside)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run, ["a", "b"]))
    assert seen == {"a": [2, 4, 0], "b": [2]}
    assert share.threads() == 4 and torch.get_num_threads() == before


def test_concurrent_steps_run_at_once_keep_their_order_and_raise_after_all_ended() -> None:
    together = threading.Barrier(3, timeout=30)  # would time out if the calls ran one after another
    assert concurrently([lambda i=i: (together.wait(), i)[1] for i in range(3)]) == [0, 1, 2]
    finished: list[str] = []

    def fails() -> None:
        raise InputError("the first run failed")

    def slow() -> str:
        time.sleep(0.3)
        finished.append("slow")
        return "slow"

    with pytest.raises(InputError, match="first run failed"):
        concurrently([fails, slow])
    assert finished == ["slow"]  # the sibling was not abandoned mid-way

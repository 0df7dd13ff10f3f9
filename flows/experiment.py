"""The flow ``webvse-experiment``: the paper's comparison over a grid of losses, variants and seeds.

Composition only: the data steps of ``webvse`` (cached, so shared with the pipeline),
then per (loss, seed) the baseline and webly Stage I runs and the two Stage II forks of
the webly run (curriculum on and off; for ``experiment.web_fraction_loss`` also one fork
per ``experiment.web_fractions`` share of the web photos), then one report task. Every training is a cached
task, so an interrupted grid resumes where it stopped and a bigger ``seeds`` list only
trains the new seeds.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.pipeline import prepare_data, task_runner
from tasks.orchestration import StepPlan, configured
from tasks.pipeline_config import PipelineConfig, Step
from tasks.reporting.experiment import WEB_FRACTION_PREFIX, GridRun, grid_settings, loss_slug
from tasks.steps.experiment import experiment_report_step
from tasks.steps.training import stage1_step, stage2_step


@flow(name="webvse-experiment", task_runner=task_runner(), log_prints=True)
def experiment(config: PipelineConfig = PipelineConfig(), refresh: list[Step] | None = None) -> dict[str, Any]:
    """Train and evaluate the grid; returns the summary table (mean and std over seeds)."""
    plan = StepPlan.make(None, refresh or [])
    root = config.root
    data_root = str(root.root)
    source = prepare_data(config, plan).source
    stage1 = configured(stage1_step, "stage1", root, plan, config.retries)
    stage2 = configured(stage2_step, "stage2", root, plan, config.retries)
    cells: list[GridRun] = []
    for loss in config.experiment.losses:
        for seed in config.experiment.seeds:
            fractions = config.experiment.web_fractions if loss == config.experiment.web_fraction_loss else []
            settings = grid_settings(config.train, loss, seed, config.device, config.precision, fractions)
            name = f"exp-{loss_slug(loss)}-s{seed}"
            base = stage1(data_root, source, settings["baseline"], f"{name}-baseline", fresh=plan.fresh("stage1"))
            webly = stage1(data_root, source, settings["webly"], f"{name}-webly", fresh=plan.fresh("stage1"))
            plain = stage2(
                data_root, webly["run_dir"], source, settings["nocurriculum"], f"{name}-nocurriculum", fresh=plan.fresh("stage2")
            )
            curriculum = stage2(
                data_root, webly["run_dir"], source, settings["webly"], f"{name}-curriculum", fresh=plan.fresh("stage2")
            )
            cells += [
                GridRun(loss, seed, "baseline", base["run_dir"], "stage1"),
                GridRun(loss, seed, "stage1", webly["run_dir"], "stage1"),
                GridRun(loss, seed, "stage2-nocurriculum", plain["run_dir"], "stage2"),
                GridRun(loss, seed, "stage2-curriculum", curriculum["run_dir"], "stage2"),
            ]
            for variant in (v for v in settings if v.startswith(WEB_FRACTION_PREFIX)):
                share = stage2(
                    data_root, webly["run_dir"], source, settings[variant], f"{name}-{variant}", fresh=plan.fresh("stage2")
                )
                cells.append(GridRun(loss, seed, variant, share["run_dir"], "stage2"))
    report = configured(experiment_report_step, "evaluate", root, plan, config.retries)
    karpathy = config.karpathy_path()
    summary = report(data_root, [cell.__dict__ for cell in cells], config.evaluate, karpathy, config.device)
    return {"summary": summary, "cells": [cell.__dict__ for cell in cells], "folder": str(root.runs_dir / "experiment")}

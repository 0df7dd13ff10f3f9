"""The experiment of the paper's Tables 1-2: does web data help, beyond the seed spread?

Grid: {VSE, VSE++} x {baseline (lambda_tag = 0), Stage I with the tag loss, Stage I +
Stage II without curriculum, Stage I + Stage II with curriculum} x seeds. The two Stage II
variants of a (loss, seed) fork the same Stage I run, so the grid trains 2 Stage I and
2 Stage II models per (loss, seed), and the flow's cache serves every cell already done.

The report gives mean +- std over seeds in the paper's layout (R@1, R@10, MedR both
ways), and the same recalls split by **concept frequency**: test images whose rarest
concept is frequent in the training captions vs rare. Concepts are the world's ground
truth objects when the split file has them (the generated world), else the image's
dummy tags that are keywords (any real dataset).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from storage.atomic import atomic_write_text
from storage.errors import InputError
from storage.layout import EXPERIMENT_DIR, DataRoot
from storage.tables import CLEAN_CAPTIONS, CLEAN_IMAGES, KEYWORDS, read_table
from tasks.pipeline_config import EvaluateConfig, TrainConfig
from tasks.reporting.evaluation import embedded_stages, run_source
from tasks.reporting.plots import plot_r1_bars, plot_web_fraction
from tasks.text.keywords import image_dummy_tags
from tasks.training.runs import RunSettings, run_settings
from webvse_model.metrics import retrieval_ranks, run_protocol

VARIANTS = ("baseline", "stage1", "stage2-nocurriculum", "stage2-curriculum")
VARIANT_NAMES = {
    "baseline": "baseline (λ=0)",
    "stage1": "Stage I + tags",
    "stage2-nocurriculum": "+ Stage II, no curriculum",
    "stage2-curriculum": "+ Stage II, curriculum",
}
WEB_FRACTION_PREFIX = "stage2-web"


def web_fraction_variant(fraction: float) -> str:
    """The grid variant of Stage II (curriculum) on a share of the web photos: ``stage2-web25``."""
    return f"{WEB_FRACTION_PREFIX}{round(100 * fraction)}"


def web_fraction_of(variant: str) -> float | None:
    """The share of web photos a ``stage2-web25`` cell trained on (0.25); None for the paper's variants."""
    return int(variant.removeprefix(WEB_FRACTION_PREFIX)) / 100 if variant.startswith(WEB_FRACTION_PREFIX) else None


def variant_label(variant: str) -> str:
    fraction = web_fraction_of(variant)
    return VARIANT_NAMES[variant] if fraction is None else f"+ Stage II, curriculum, {100 * fraction:.0f}% of the web photos"


def _variant_order(variant: str) -> float:
    """The paper's variants in their order, then the web-fraction cells by fraction."""
    fraction = web_fraction_of(variant)
    return VARIANTS.index(variant) if fraction is None else len(VARIANTS) + fraction


GROUPS = ("frequent", "rare")


def loss_slug(loss: str) -> str:
    """``vse++`` -> ``vsepp``: run folder names allow no '+'."""
    return loss.replace("+", "p")


def grid_settings(
    train: TrainConfig, loss: str, seed: int, device: str, precision: str = "auto", web_fractions: Sequence[float] = ()
) -> dict[str, RunSettings]:
    """The trainings of one (loss, seed): ``baseline`` and ``webly`` Stage I, Stage II with and without
    curriculum, and Stage II (curriculum) on each of ``web_fractions`` of the web photos (``stage2-web25``...)."""
    if train.stage2_epochs == 0:
        raise InputError(
            "the experiment compares Stage II with and without the curriculum: train.stage2_epochs must be at least 1"
        )
    cell = train.model_copy(update={"loss": loss, "seed": seed})
    shares = {
        web_fraction_variant(f): run_settings(cell.model_copy(update={"web_fraction": f}), device, precision=precision)
        for f in web_fractions
    }
    return shares | {
        "baseline": run_settings(cell, device, lambda_tag=0.0, precision=precision),
        "webly": run_settings(cell, device, precision=precision),
        "nocurriculum": run_settings(cell.model_copy(update={"curriculum": False}), device, precision=precision),
    }


@dataclass(frozen=True)
class GridRun:
    """One cell of the grid: which run folder and stage hold its model."""

    loss: str
    seed: int
    variant: str
    run_dir: str
    stage: str


# ------------------------------------------------------------------ concept frequency
def _world_concepts(karpathy: Path) -> dict[str, list[str]] | None:
    """Ground-truth objects per image id, when the split file carries them (the generated world)."""
    if not karpathy.is_file():
        return None
    entries = json.loads(karpathy.read_text(encoding="utf-8")).get("images", [])
    if not entries or "concepts" not in entries[0]:
        return None
    return {str(e.get("cocoid", e.get("imgid", Path(e["filename"]).stem))): list(e["concepts"]["objects"]) for e in entries}


def image_concepts(root: DataRoot, karpathy: str | None) -> dict[str, list[str]]:
    """Concepts per image: world objects if known, else the image's dummy tags that are keywords."""
    known = _world_concepts(Path(karpathy)) if karpathy else None
    if known is not None:
        return known
    keywords = set(read_table(root.keywords, KEYWORDS)["keyword"])
    tags = image_dummy_tags(read_table(root.clean_captions, CLEAN_CAPTIONS))
    return {image_id: [t for t in image_tags if t in keywords] for image_id, image_tags in tags.items()}


def frequency_groups(root: DataRoot, split: str, karpathy: str | None) -> np.ndarray:
    """``frequent`` / ``rare`` per image of ``split`` (evaluation order): halves by the training
    frequency of the image's rarest concept."""
    images = read_table(root.clean_images, CLEAN_IMAGES)
    concepts = image_concepts(root, karpathy)
    train_ids = images.loc[images["split"] == "train", "image_id"]
    counts = Counter(c for image_id in train_ids for c in set(concepts.get(image_id, [])))
    test_ids = images.loc[images["split"] == split, "image_id"].tolist()
    rarest = np.array([min((counts[c] for c in concepts.get(i, [])), default=0) for i in test_ids])
    order = np.argsort(rarest, kind="stable")
    groups = np.full(len(test_ids), "frequent", dtype=object)
    groups[order[: len(order) // 2]] = "rare"
    return groups


def _group_recalls(i2t: np.ndarray, t2i: np.ndarray, groups: np.ndarray, k: int) -> dict[str, float]:
    out = {}
    caption_groups = np.repeat(groups, k)
    for group in GROUPS:
        for direction, ranks, member in (("i2t", i2t, groups == group), ("t2i", t2i, caption_groups == group)):
            for at in (1, 10):
                out[f"{direction}_r{at}_{group}"] = float(100.0 * np.mean(ranks[member] < at)) if member.any() else float("nan")
    return out


# ------------------------------------------------------------------ tables
def measure(runs: list[GridRun], settings: EvaluateConfig, groups: np.ndarray | None, device: str = "auto") -> pd.DataFrame:
    """One row per grid cell: the standard metrics and the frequency-group recalls."""
    rows = []
    for cell in runs:
        embedded = next(e for e in embedded_stages(cell.run_dir, settings.split, device) if e.stage == cell.stage)
        metrics = run_protocol(
            settings.protocol, embedded.images, embedded.captions, embedded.captions_per_image
        ).metrics.to_dict()
        row = {**asdict(cell), **metrics}
        if groups is not None:
            i2t, t2i = retrieval_ranks(embedded.images, embedded.captions, embedded.captions_per_image)
            row |= _group_recalls(i2t, t2i, groups, embedded.captions_per_image)
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (loss, variant), in grid order."""
    metrics = [c for c in table.columns if c not in ("loss", "seed", "variant", "run_dir", "stage")]
    grouped = table.groupby(["loss", "variant"], sort=False)[metrics]
    summary = grouped.mean().join(grouped.std(ddof=1).fillna(0.0).add_suffix("_std")).reset_index()
    summary["seeds"] = grouped.size().to_numpy()
    summary = summary.sort_values(
        ["loss", "variant"], key=lambda s: s.map(_variant_order) if s.name == "variant" else s
    ).reset_index(drop=True)
    summary["label"] = [f"{loss.upper()} {variant_label(v)}" for loss, v in zip(summary["loss"], summary["variant"])]
    return summary


def _cell(row: pd.Series, column: str, digits: int = 1) -> str:
    return f"{row[column]:.{digits}f} ± {row[column + '_std']:.{digits}f}"


def paper_table(summary: pd.DataFrame) -> str:
    """Markdown in the paper's layout (R@1, R@10, MedR both ways) plus R@5, which rsum also sums."""
    lines = [
        "| model | i→t R@1 | i→t R@5 | i→t R@10 | i→t MedR | t→i R@1 | t→i R@5 | t→i R@10 | t→i MedR | rsum |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in summary.iterrows():
        cells = [_cell(row, f"{d}_{m}") for d in ("i2t", "t2i") for m in ("r1", "r5", "r10", "medr")]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {_cell(row, 'rsum')} |")
    return "\n".join(lines)


def frequency_table(summary: pd.DataFrame) -> str:
    lines = [
        "| model | i→t R@1 frequent | i→t R@1 rare | t→i R@1 frequent | t→i R@1 rare | t→i R@10 frequent | t→i R@10 rare |",
        "|---|---|---|---|---|---|---|",
    ]
    columns = ("i2t_r1_frequent", "i2t_r1_rare", "t2i_r1_frequent", "t2i_r1_rare", "t2i_r10_frequent", "t2i_r10_rare")
    for _, row in summary.iterrows():
        lines.append(f"| {row['label']} | " + " | ".join(_cell(row, c) for c in columns) + " |")
    return "\n".join(lines)


def beyond_spread(summary: pd.DataFrame, variant: str, metric: str = "rsum") -> dict[str, str]:
    """Per loss: does ``variant`` beat the baseline by more than the two seed spreads together?"""
    verdicts = {}
    for loss, rows in summary.groupby("loss", sort=False):
        base = rows[rows["variant"] == "baseline"].iloc[0]
        other = rows[rows["variant"] == variant].iloc[0]
        gain, spread = other[metric] - base[metric], other[f"{metric}_std"] + base[f"{metric}_std"]
        word = "better than" if gain > spread else "worse than" if gain < -spread else "within the seed spread of"
        verdicts[str(loss)] = f"{word} the baseline ({metric} {gain:+.1f}, spread {spread:.1f})"
    return verdicts


@dataclass(frozen=True)
class PairedGain:
    """``variant - reference`` seed by seed: same seed = same data order and same initial weights
    of the shared branches, so the paired differences cancel what the seed spread cannot."""

    mean: float
    std: float
    wins: int
    seeds: int

    def describe(self, metric: str = "rsum") -> str:
        return f"paired by seed {metric} {self.mean:+.1f} ± {self.std:.1f}, higher in {self.wins} of {self.seeds} seeds"


def paired_gains(table: pd.DataFrame, variant: str, metric: str = "rsum", reference: str = "baseline") -> dict[str, PairedGain]:
    """Per loss: the per-seed differences of ``variant`` against ``reference`` of the same seed."""
    out = {}
    for loss, rows in table.groupby("loss", sort=False):
        by_seed = rows.pivot_table(index="seed", columns="variant", values=metric, aggfunc="first")
        if reference not in by_seed or variant not in by_seed:
            continue
        diff = (by_seed[variant] - by_seed[reference]).dropna().to_numpy(dtype=float)
        if len(diff):
            std = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
            out[str(loss)] = PairedGain(float(diff.mean()), std, int((diff > 0).sum()), len(diff))
    return out


def web_fraction_curve(table: pd.DataFrame) -> tuple[str, pd.DataFrame] | None:
    """rsum against the share of web photos for the loss that has web-fraction cells: 0 = its Stage I,
    1 = its Stage II with the curriculum; with each point's paired-by-seed gain over Stage I."""
    cells = table[table["variant"].str.startswith(WEB_FRACTION_PREFIX)]
    if cells.empty:
        return None
    loss = str(cells["loss"].iloc[0])
    rows = table[table["loss"] == loss]
    points = {"stage1": 0.0, "stage2-curriculum": 1.0}
    points |= {v: web_fraction_of(v) or 0.0 for v in cells["variant"].unique()}
    curve = []
    for variant, fraction in sorted(points.items(), key=lambda item: item[1]):
        values = rows.loc[rows["variant"] == variant, "rsum"]
        if values.empty:
            continue
        gain = paired_gains(rows, variant, reference="stage1").get(loss)
        curve.append({
            "fraction": fraction, "variant": variant, "rsum": values.mean(), "rsum_std": values.std(ddof=1) if len(values) > 1 else 0.0,
            "seeds": len(values), "gain_over_stage1": gain.describe() if gain and variant != "stage1" else "",
        })  # fmt: skip
    return loss, pd.DataFrame(curve)


def web_fraction_table(curve: pd.DataFrame) -> str:
    lines = ["| web photos in Stage II | rsum | seeds | against its own Stage I |", "|---|---|---|---|"]
    for _, row in curve.iterrows():
        share = "0 % (Stage I)" if row["fraction"] == 0 else f"{100 * row['fraction']:.0f} %"
        lines.append(f"| {share} | {row['rsum']:.1f} ± {row['rsum_std']:.1f} | {row['seeds']} | {row['gain_over_stage1']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ the report
@dataclass
class ExperimentReport:
    table: pd.DataFrame
    summary: pd.DataFrame
    markdown: str
    folder: Path


def report_experiment(root: DataRoot, runs: list[GridRun], settings: EvaluateConfig, karpathy: str | None, device: str = "auto",
                      log: Callable[[str], None] = print) -> ExperimentReport:  # fmt: skip
    source = run_source(Path(runs[0].run_dir))
    split = settings.split or source.test_split
    groups = frequency_groups(root, split, karpathy) if source.kind == "parquet" else None
    table = measure(runs, settings, groups, device)
    summary = summarise(table)
    folder = root.runs_dir / EXPERIMENT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / "cells.parquet")  # one row per (loss, variant, seed)
    summary.to_parquet(folder / "summary.parquet")
    plot_r1_bars(summary, folder / "r1.png", label_column="label")
    verdicts = {v: beyond_spread(summary, v) for v in VARIANTS[1:]}
    for variant, per_loss in verdicts.items():
        for loss, paired in paired_gains(table, variant).items():
            per_loss[loss] += f"; {paired.describe()}"
    # Stage II's own questions: does adapting on web pairs improve on the Stage I it started
    # from, and does the curriculum (the paper's ablation) beat the same epochs without it?
    stage2_questions = [
        ("stage2-nocurriculum", "stage1", f"{VARIANT_NAMES['stage2-nocurriculum']} against its own Stage I"),
        ("stage2-curriculum", "stage1", f"{VARIANT_NAMES['stage2-curriculum']} against its own Stage I"),
        ("stage2-curriculum", "stage2-nocurriculum", "Stage II with the curriculum against without it"),
    ]
    stage2_effect = [
        f"- {label}: " + "; ".join(f"{loss.upper()} {g.describe()}" for loss, g in gains.items())
        for variant, reference, label in stage2_questions
        if (gains := paired_gains(table, variant, reference=reference))
    ]
    seeds = sorted(table["seed"].unique().tolist())
    fractions: list[str] = []
    if (found := web_fraction_curve(table)) is not None:
        loss, curve = found
        curve.to_parquet(folder / "web_fraction.parquet")
        plot_web_fraction(curve, folder / "web_fraction.png", f"{loss.upper()}: Stage II on a share of the kept web photos")
        fractions = [f"## More web data? ({loss.upper()}, Stage II with the curriculum)", web_fraction_table(curve),
                     f"Plot: `{folder / 'web_fraction.png'}`"]  # fmt: skip
    markdown = "\n\n".join(
        [
            f"# Experiment: {split} split, protocol {settings.protocol}, seeds {seeds} (mean ± std)",
            paper_table(summary),
            "## By concept frequency (test images whose rarest concept is frequent / rare in training)",
            frequency_table(summary) if groups is not None else "(no concepts for a precomputed-feature source)",
            "## Beyond the seed spread?",
            "\n".join(
                [
                    *(
                        f"- {VARIANT_NAMES[v]}: " + "; ".join(f"{loss.upper()} {text}" for loss, text in per.items())
                        for v, per in verdicts.items()
                    ),
                    *stage2_effect,
                ]
            ),
            *fractions,
            f"Plot: `{folder / 'r1.png'}`; cells: `{folder / 'cells.parquet'}`",
        ]
    )
    atomic_write_text(folder / "results.md", markdown)
    log(f"experiment: {len(runs)} cells evaluated -> {folder}")
    return ExperimentReport(table, summary, markdown, folder)

"""What a person looks at after a run: recall@K curves, loss curves, retrieval examples.

Pure rendering (matplotlib with the Agg backend, markdown, HTML): no Prefect, no
training; :mod:`tasks.reporting.evaluation` feeds it embeddings and metrics and publishes the
results as Prefect artifacts.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on workers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from storage.atomic import atomic_write_path  # noqa: E402


@dataclass(frozen=True)
class RankedQueries:
    """0-based ranks of the ground truth: ``i2t`` per image, ``t2i`` per caption."""

    i2t: np.ndarray
    t2i: np.ndarray


def recall_curve(ranks: np.ndarray, max_k: int) -> np.ndarray:
    """R@K in percent for K = 1..max_k (vectorised: one bincount, one cumsum)."""
    counts = np.bincount(np.minimum(ranks, max_k), minlength=max_k + 1)[:max_k]
    return 100.0 * np.cumsum(counts) / max(len(ranks), 1)


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_write_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_recall_curves(ranked: dict[str, RankedQueries], path: Path, max_k: int = 50) -> Path:
    """R@K against K, image->text and text->image, one line per model."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, direction in zip(axes, ("i2t", "t2i")):
        for label, queries in ranked.items():
            ranks = getattr(queries, direction)
            k = np.arange(1, max_k + 1)
            ax.plot(k, recall_curve(ranks, max_k), label=label, linewidth=1.6)
        ax.set_xscale("log")
        ax.set_xlabel("K")
        ax.set_title("image → text" if direction == "i2t" else "text → image")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("R@K (%)")
    axes[1].legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_training(histories: dict[str, pd.DataFrame], path: Path) -> Path:
    """Training loss and validation rsum per epoch; Stage II continues Stage I's epoch axis."""
    fig, (loss_ax, rsum_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, history in histories.items():
        offset = 0
        for stage, rows in history.sort_values(["stage", "epoch"]).groupby("stage", sort=True):
            x = rows["epoch"].to_numpy() + offset
            loss_ax.plot(x, rows["train_loss"], marker=".", label=f"{label}/{stage}")
            if "rsum" in rows and rows["rsum"].notna().any():
                rsum_ax.plot(x, rows["rsum"], marker=".", label=f"{label}/{stage}")
            offset = int(x.max())
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss per epoch")
    rsum_ax.set(xlabel="epoch", ylabel="rsum (validation)", title="validation rsum per epoch")
    for ax in (loss_ax, rsum_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_r1_bars(table: pd.DataFrame, path: Path, label_column: str = "variant") -> Path:
    """R@1 both ways per model, with the seed spread as error bars when there is one."""
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(table)), 4.2))
    x = np.arange(len(table))
    for offset, direction in ((-0.2, "i2t"), (0.2, "t2i")):
        errors = table[f"{direction}_r1_std"] if f"{direction}_r1_std" in table else None
        ax.bar(
            x + offset,
            table[f"{direction}_r1"],
            0.4,
            yerr=errors,
            capsize=3,
            label="image → text" if direction == "i2t" else "text → image",
        )
    ax.set_xticks(x, table[label_column], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("R@1 (%)")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_web_fraction(curve: pd.DataFrame, path: Path, title: str) -> Path:
    """rsum (mean, seed std as error bars) against the share of the kept web photos Stage II saw; 0 = Stage I."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.errorbar(100 * curve["fraction"], curve["rsum"], yerr=curve["rsum_std"], marker="o", capsize=4)
    ax.set_xlabel("web photos used in Stage II (% of those kept)")
    ax.set_ylabel("rsum (test)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_nights(history: pd.DataFrame, path: Path) -> Path:
    """Per promotion decision: validation rsum of the new model and of the model in use, the new
    model's test rsum (filled: promoted), and the photos the night's crawl added (bars)."""
    fig, (rsum_ax, photos_ax) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True, height_ratios=(3, 1.4))
    x = np.arange(len(history))
    promoted = history["promoted"].to_numpy(bool)
    rsum_ax.plot(x, history["candidate_val_rsum"], marker="o", label="new model, validation")
    rsum_ax.plot(x, history["in_use_val_rsum"], marker="s", linestyle="--", label="model in use before, validation")
    rsum_ax.plot(x, history["test_rsum"], color="tab:green", linestyle=":", label="new model, test")
    rsum_ax.scatter(x[promoted], history["test_rsum"][promoted], color="tab:green", zorder=3, label="promoted")
    rsum_ax.scatter(
        x[~promoted], history["test_rsum"][~promoted], facecolors="none", edgecolors="tab:red", zorder=3, label="kept the old one"
    )
    rsum_ax.set_ylabel("rsum")
    rsum_ax.grid(True, alpha=0.3)
    rsum_ax.legend(fontsize=8)
    photos_ax.bar_label(photos_ax.bar(x, history["new_photos"], color="tab:gray"), fontsize=8)
    photos_ax.set_ylabel("photos added")
    photos_ax.set_xticks(x, history["night"], rotation=20, ha="right", fontsize=8)
    photos_ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def retrieval_examples(
    captions: Sequence[str],
    caption_image: np.ndarray,
    scores: np.ndarray,
    image_names: Sequence[str],
    queries: Sequence[int],
    k: int = 5,
    image_files: Sequence[str] = (),
) -> str:
    """Markdown in the manner of the paper's Figure 4: a caption, its top-k images (thumbnails
    when ``image_files`` are given), and where the true one ranked."""
    lines = []
    for q in queries:
        order = np.argsort(-scores[q], kind="stable")
        truth = int(caption_image[q])
        rank = int(np.flatnonzero(order == truth)[0]) + 1
        lines.append(f"**“{captions[q]}”** (ground truth at rank {rank})\n")
        lines.append("| # | image | file | cosine | |\n|---|---|---|---|---|")
        for position, image in enumerate(order[:k], start=1):
            mark = "✅ ground truth" if image == truth else ""
            picture = thumbnail_markdown(image_files[image]) if image_files else ""
            lines.append(f"| {position} | {picture} | `{image_names[image]}` | {scores[q, image]:.3f} | {mark} |")
        lines.append("")
    return "\n".join(lines)


def thumbnail_markdown(path: str | Path, size: int = 96) -> str:
    """A small JPEG thumbnail inlined as a data URI: the Prefect UI and any markdown viewer show
    it without access to the data root."""
    buffer = io.BytesIO()
    try:
        with Image.open(path) as image:
            image.thumbnail((size, size))
            image.convert("RGB").save(buffer, "JPEG", quality=70)
    except (OSError, ValueError):
        return "(unreadable)"
    return f"![{html.escape(Path(path).name)}](data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def artifact_table(table: pd.DataFrame, label_column: str = "variant") -> list[dict[str, object]]:
    """Rows for a Prefect table artifact that a person reads: the variant first, then R@K and
    ranks both ways and rsum, one decimal (no ``28.299999999999997``)."""
    columns = [f"{d}_{m}" for d in ("i2t", "t2i") for m in ("r1", "r5", "r10", "medr", "meanr")] + ["rsum"]
    titles = {"i2t": "image→text", "t2i": "text→image", "r1": "R@1", "r5": "R@5", "r10": "R@10", "medr": "medr", "meanr": "meanr"}
    rows = []
    for _, row in table.iterrows():
        out: dict[str, object] = {label_column: str(row[label_column])}
        for column in columns:
            if column in row:
                name = "rsum" if column == "rsum" else f"{titles[column[:3]]} {titles[column[4:]]}"
                out[name] = round(float(row[column]), 1)
        rows.append(out)
    return rows

"""Keyword + dummy-tag extraction speed: captions/s, batched and multi-process vs one at a time.

Captions: the 40,455 real Flickr8k captions of ../shared/data (when present) topped up
with generated-world captions to ``--captions`` (default 50,000). The baseline is the
same backend called one caption at a time (no ``nlp.pipe`` batching), on a subset,
in the same run. Prints captions/s and ratios.

    python benchmarks/bench_text.py [--captions 50000] [--processes 2]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from tasks.text.backends import SpacyBackend
from tasks.text.keywords import analyse_captions, keyword_table
from webvse_world.concepts import OBJECTS, zipf_weights
from webvse_world.scenes import captions as world_captions
from webvse_world.scenes import sample_scene

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k-1k" / "all_captions.txt"


def corpus(count: int) -> tuple[list[str], str]:
    texts: list[str] = []
    if SHARED.is_file():
        with open(SHARED, newline="", encoding="utf-8") as handle:
            texts = [row["caption"] for row in csv.DictReader(handle)][:count]
    rng = np.random.default_rng(0)
    while len(texts) < count:
        texts.extend(world_captions(sample_scene(rng, zipf_weights(len(OBJECTS))), rng))
    real = min(count, 40455) if SHARED.is_file() else 0
    return texts[:count], f"{real} real Flickr8k + {count - real} generated"


def timed(backend: SpacyBackend, texts: list[str]) -> float:
    started = time.perf_counter()
    analysis = analyse_captions(texts, backend)
    keyword_table(analysis.words, top_n=1000)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=50000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--baseline-captions", type=int, default=3000)
    args = parser.parse_args()
    texts, origin = corpus(args.captions)
    one = SpacyBackend(batch_size=1)
    one.analyse = lambda ts: (next(SpacyBackend.analyse(one, [t])) for t in ts)  # type: ignore[method-assign]
    rows = [("one caption per call (baseline)", timed(one, texts[: args.baseline_captions]))]
    rows.append(("nlp.pipe, batch 512, 1 process", timed(SpacyBackend(batch_size=512), texts)))
    if args.processes > 1:
        rows.append(
            (
                f"nlp.pipe, batch 512, {args.processes} processes",
                timed(SpacyBackend(batch_size=512, n_process=args.processes), texts),
            )
        )
    print(f"{len(texts)} captions ({origin}); spaCy en_core_web_sm + lemminflect; baseline on {args.baseline_captions}")
    print(f"{'mode':<36}{'captions/s':>12}{'vs baseline':>13}")
    for name, rate in rows:
        print(f"{name:<36}{rate:>12.0f}{rate / rows[0][1]:>12.2f}x")


if __name__ == "__main__":
    main()

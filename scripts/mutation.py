"""Mutation testing of the modules that carry the paper's rules, with a per-module report.

    pip install -e ".[test,mutation]"
    python scripts/mutation.py            # mutmut run, then the table below (~10 min on 2 cores)
    python scripts/mutation.py --report   # the table of the last run only

Which modules and which tests: ``[tool.mutmut]`` in pyproject.toml (losses, metrics, data
and the curriculum, the crawl filters, a step's cache key and input fingerprint). Not in CI:
it runs the covering tests once per mutant. A surviving mutant is a change to a rule that
no test notices: kill it with a test, or explain it in the README (an equivalent mutant).
Exits 1 when a mutant survived that is not in ``EXPLAINED``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = [sys.executable, "-m", "mutmut"]

# Why a surviving mutant changes nothing the tests could see (README, Testing).
REASONS: dict[str, str] = {
    "cuda": "device placement or a CUDA-only branch: the same on the CPU, where the tests run (no GPU in CI)",
    "buffer": "a preallocated output buffer: torch resizes or allocates it, the values are the same",
    "speed": "a chunk, block, fast-path or preallocation size: the same values at another speed",
    "tolerance": "a larger float32 error bound (more near-ties re-checked in float64, same ranks); or half of it, which no test's "
    "rounding error reaches (the bound is 2 x sqrt(D) x 2^-24 x |a||b|, twice the usual estimate of that error)",
    "count_dtype": "an exact count summed in a wider integer type: the same counts",
    "rank_dtype": "keyword ranks arrive as int64; any numeric dtype orders them alike",
    "separator": "another constant separator between fixed-length digests or inputs separates them as well",
    "self": "the target itself is excluded before the tie rule, so equal indices never meet",
    "square": "the score matrix of a batch is square (images and texts are both [batch, D], checked)",
    "zeros": "t2i starts at zero and each chunk's rows are written once: = and += agree",
}

# The survivors of the last run, each with its reason; a survivor not listed fails the script.
# Mutant names follow the code: after an edit of a module, run again and look at what changed.
EXPLAINED: dict[str, str] = {
    "storage.fingerprint.x_fingerprint__mutmut_12": "separator",
    "tasks.cache_keys.xǁCodeOfǁcompute_key__mutmut_3": "separator",
    "webvse_model.data.x_caption_batch__mutmut_11": "cuda",
    "webvse_model.data.x_caption_batch__mutmut_5": "cuda",
    "webvse_model.data.x_caption_batch__mutmut_7": "cuda",
    "webvse_model.data.x_caption_batch__mutmut_8": "cuda",
    "webvse_model.data.x_pad_token_ids__mutmut_7": "speed",
    "webvse_model.data.xǁWebPairsǁ__post_init____mutmut_13": "rank_dtype",
    "webvse_model.data.xǁWebPairsǁ__post_init____mutmut_15": "rank_dtype",
    "webvse_model.losses.x_ranking_loss__mutmut_33": "cuda",
    "webvse_model.losses.x_ranking_loss__mutmut_36": "cuda",
    "webvse_model.losses.x_ranking_loss__mutmut_37": "square",
    "webvse_model.losses.x_ranking_loss__mutmut_39": "square",
    "webvse_model.losses.x_ranking_loss__mutmut_41": "square",
    "webvse_model.metrics.x__as_tensor__mutmut_19": "speed",
    "webvse_model.metrics.x__as_tensor__mutmut_25": "cuda",
    "webvse_model.metrics.x__as_tensor__mutmut_26": "cuda",
    "webvse_model.metrics.x__as_tensor__mutmut_27": "cuda",
    "webvse_model.metrics.x__as_tensor__mutmut_28": "cuda",
    "webvse_model.metrics.x__as_tensor__mutmut_3": "cuda",
    "webvse_model.metrics.x__as_tensor__mutmut_4": "cuda",
    "webvse_model.metrics.x__as_tensor__mutmut_6": "cuda",
    "webvse_model.metrics.x__band_positions__mutmut_1": "cuda",
    "webvse_model.metrics.x__band_positions__mutmut_11": "cuda",
    "webvse_model.metrics.x__band_positions__mutmut_12": "cuda",
    "webvse_model.metrics.x__band_positions__mutmut_13": "cuda",
    "webvse_model.metrics.x__band_positions__mutmut_2": "cuda",
    "webvse_model.metrics.x__band_positions__mutmut_3": "cuda",
    "webvse_model.metrics.x__count__mutmut_12": "count_dtype",
    "webvse_model.metrics.x__count__mutmut_14": "count_dtype",
    "webvse_model.metrics.x__count__mutmut_40": "count_dtype",
    "webvse_model.metrics.x__count__mutmut_42": "count_dtype",
    "webvse_model.metrics.x__count__mutmut_44": "count_dtype",
    "webvse_model.metrics.x__count__mutmut_46": "count_dtype",
    "webvse_model.metrics.x__exact_dots__mutmut_13": "speed",
    "webvse_model.metrics.x__exact_dots__mutmut_15": "speed",
    "webvse_model.metrics.x__exact_dots__mutmut_4": "cuda",
    "webvse_model.metrics.x__exact_dots__mutmut_7": "cuda",
    "webvse_model.metrics.x__exact_winners__mutmut_21": "self",
    "webvse_model.metrics.x__float32_tolerance__mutmut_11": "tolerance",
    "webvse_model.metrics.x__float32_tolerance__mutmut_14": "tolerance",
    "webvse_model.metrics.x__float32_tolerance__mutmut_15": "tolerance",
    "webvse_model.metrics.x__float32_tolerance__mutmut_16": "tolerance",
    "webvse_model.metrics.x__float32_tolerance__mutmut_20": "tolerance",
    "webvse_model.metrics.x__float32_tolerance__mutmut_25": "tolerance",
    "webvse_model.metrics.x__float32_tolerance__mutmut_4": "tolerance",
    "webvse_model.metrics.x__float32_tolerance__mutmut_6": "tolerance",
    "webvse_model.metrics.x__float32_tolerance__mutmut_9": "tolerance",
    "webvse_model.metrics.x__ranks__mutmut_100": "buffer",
    "webvse_model.metrics.x__ranks__mutmut_101": "buffer",
    "webvse_model.metrics.x__ranks__mutmut_109": "buffer",
    "webvse_model.metrics.x__ranks__mutmut_112": "buffer",
    "webvse_model.metrics.x__ranks__mutmut_115": "buffer",
    "webvse_model.metrics.x__ranks__mutmut_116": "buffer",
    "webvse_model.metrics.x__ranks__mutmut_118": "buffer",
    "webvse_model.metrics.x__ranks__mutmut_119": "buffer",
    "webvse_model.metrics.x__ranks__mutmut_133": "buffer",
    "webvse_model.metrics.x__ranks__mutmut_134": "buffer",
    "webvse_model.metrics.x__ranks__mutmut_138": "buffer",
    "webvse_model.metrics.x__ranks__mutmut_141": "buffer",
    "webvse_model.metrics.x__ranks__mutmut_146": "cuda",
    "webvse_model.metrics.x__ranks__mutmut_149": "cuda",
    "webvse_model.metrics.x__ranks__mutmut_15": "cuda",
    "webvse_model.metrics.x__ranks__mutmut_167": "zeros",
    "webvse_model.metrics.x__ranks__mutmut_24": "speed",
    "webvse_model.metrics.x__ranks__mutmut_27": "speed",
    "webvse_model.metrics.x__ranks__mutmut_62": "cuda",
    "webvse_model.metrics.x__ranks__mutmut_64": "cuda",
    "webvse_model.metrics.x__ranks__mutmut_73": "cuda",
    "webvse_model.metrics.x__ranks__mutmut_76": "cuda",
    "webvse_model.metrics.x__ranks__mutmut_80": "cuda",
    "webvse_model.metrics.x__ranks__mutmut_83": "cuda",
    "webvse_model.metrics.x__ranks__mutmut_96": "buffer",
    "webvse_model.metrics.x__ranks__mutmut_97": "buffer",
    "webvse_model.metrics.x__ranks__mutmut_98": "buffer",
    "webvse_model.metrics.x__ranks__mutmut_99": "buffer",
    "webvse_model.metrics.x_evaluate_embeddings__mutmut_12": "cuda",
    "webvse_model.metrics.x_evaluate_embeddings__mutmut_7": "cuda",
    "webvse_model.metrics.x_retrieval_ranks__mutmut_10": "cuda",
    "webvse_model.metrics.x_retrieval_ranks__mutmut_19": "cuda",
    "webvse_model.metrics.x_retrieval_ranks__mutmut_2": "cuda",
    "webvse_model.metrics.x_retrieval_ranks__mutmut_25": "cuda",
    "webvse_model.metrics.x_retrieval_ranks__mutmut_26": "cuda",
    "webvse_model.metrics.x_retrieval_ranks__mutmut_27": "cuda",
    "webvse_model.metrics.x_retrieval_ranks__mutmut_3": "cuda",
    "webvse_model.metrics.x_retrieval_ranks__mutmut_5": "cuda",
    "webvse_model.metrics.x_retrieval_ranks__mutmut_55": "speed",
}


def results() -> dict[str, str]:
    """``{mutant name: status}`` of the last run."""
    out = subprocess.run([*MUTMUT, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return dict(m.groups() for m in re.finditer(r"^\s*(\S+): (.+)$", out, re.MULTILINE))


def module_of(mutant: str) -> str:
    return ".".join(mutant.split(".")[:2])


def report(statuses: dict[str, str]) -> int:
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for mutant, status in statuses.items():
        table[module_of(mutant)][status] += 1
    columns = ["killed", "survived", "timeout", "no tests", "suspicious", "skipped"]
    print(f"{'module':<28}" + "".join(f"{c:>11}" for c in columns) + f"{'score':>8}")
    for module in sorted(table):
        counts = table[module]
        tested = counts["killed"] + counts["survived"] + counts["timeout"]
        score = 100 * (counts["killed"] + counts["timeout"]) / tested if tested else 0.0
        print(f"{module:<28}" + "".join(f"{counts[c]:>11}" for c in columns) + f"{score:>7.1f}%")
    survivors = sorted(m for m, s in statuses.items() if s == "survived")
    unexplained = [m for m in survivors if m not in EXPLAINED]
    by_reason = Counter(EXPLAINED[m] for m in survivors if m in EXPLAINED)
    for reason, count in by_reason.most_common():
        print(f"survived, equivalent ({count}): {REASONS[reason]}")
    for mutant in unexplained:
        print(f"survived: {mutant}  <- no test notices this change: kill it with a test, or explain it in EXPLAINED")
    return 1 if unexplained else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", action="store_true", help="only print the table of the last run")
    parser.add_argument("--max-children", type=int, default=2)
    args = parser.parse_args()
    if not args.report:
        subprocess.run([*MUTMUT, "run", "--max-children", str(args.max_children)], cwd=ROOT, check=False)
    return report(results())


if __name__ == "__main__":
    sys.exit(main())

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

# Survivors that are equivalent on the machines the tests run on, with why (see README, Testing).
EXPLAINED: dict[str, str] = {
    "webvse_model.metrics.x_evaluate_embeddings__mutmut_": "device=None is the CPU, where the tests run",
    "webvse_model.data.x_caption_batch__mutmut_": "non_blocking and device=None only differ on CUDA",
    "storage.fingerprint.x_fingerprint__mutmut_": "another constant separator between inputs separates as well",
}


def results() -> dict[str, str]:
    """``{mutant name: status}`` of the last run."""
    out = subprocess.run([*MUTMUT, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return dict(m.groups() for m in re.finditer(r"^\s*(\S+): (.+)$", out, re.MULTILINE))


def module_of(mutant: str) -> str:
    return ".".join(mutant.split(".")[:2])


def explained(mutant: str, survivors_shown: set[str]) -> str | None:
    for prefix, why in EXPLAINED.items():
        if mutant.startswith(prefix) and mutant in survivors_shown:
            return why
    return None


def report(statuses: dict[str, str], allowed: set[str]) -> int:
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
    unexplained = [m for m in survivors if m not in allowed]
    for mutant in survivors:
        why = explained(mutant, allowed)
        print(f"survived: {mutant}" + (f"  (equivalent: {why})" if why else "  <- no test notices this change"))
    return 1 if unexplained else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", action="store_true", help="only print the table of the last run")
    parser.add_argument("--max-children", type=int, default=2)
    args = parser.parse_args()
    if not args.report:
        subprocess.run([*MUTMUT, "run", "--max-children", str(args.max_children)], cwd=ROOT, check=False)
    statuses = results()
    allowed = {m for m, s in statuses.items() if s == "survived" and any(m.startswith(p) for p in EXPLAINED)}
    return report(statuses, allowed)


if __name__ == "__main__":
    sys.exit(main())

"""How long a ``webvse`` command takes to answer when it has nothing to run, against the time a
process takes to load the pipeline (torch, Prefect, spaCy, gensim, the flow): the baseline of the
same run, and what every command paid before the commands loaded their parts themselves.

Each command is a fresh process (as a user types it), timed wall-clock; medians of ``--rounds``
interleaved rounds (machine noise hits both alike).

    python benchmarks/bench_cli_start.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "webvse --help": ["--help"],
    "webvse run --config <missing file>": ["run", "--config", "/no/such/config.yaml"],
    "webvse run --set <no '='>": ["run", "--set", "train.epochs"],
    "webvse evaluate --run <unknown>": ["evaluate", "--run", "nope"],
    "webvse models (empty data root)": ["models"],
}


def seconds(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    baseline_name = "load the pipeline (import flows.pipeline)"
    times: dict[str, list[float]] = {baseline_name: [], **{name: [] for name in COMMANDS}}
    with tempfile.TemporaryDirectory() as root:
        for _ in range(args.rounds):
            times[baseline_name].append(seconds([sys.executable, "-c", "import flows.pipeline"]))
            for name, argv in COMMANDS.items():
                data_root = [] if argv == ["--help"] else ["--data-root", root]
                times[name].append(seconds([sys.executable, "-m", "flows.cli", *argv, *data_root]))
    baseline = statistics.median(times[baseline_name])
    print(f"medians of {args.rounds} interleaved rounds, one fresh process each")
    print(f"{'':<44}{'seconds':>9}{'vs baseline':>13}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<44}{median:>9.2f}{median / baseline:>13.2f}")


if __name__ == "__main__":
    main()

"""One place to change a default (issue 15): the value declared in ``webvse_model`` reaches
the command line's help, the flow's parameter schema (what YAML files and the Prefect UI
are checked against) and a trained run's stored ``config.json``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("webvse_model", "webvse_world", "storage", "tasks", "flows")

PROBE = """
import json, sys
from flows.cli import build_parser, main
from tasks.pipeline_config import PipelineConfig

parser = build_parser()
train = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
print("HELP", json.dumps(train.format_help()))
schema = PipelineConfig.model_json_schema()
print("SCHEMA", json.dumps(schema["$defs"]["TrainConfig"]["properties"]["margin"]))
precomp, data_root = sys.argv[1], sys.argv[2]
small = ["--embed-dim", "16", "--hidden-dim", "16", "--gru-hidden", "16", "--word-dim", "8", "--device", "cpu", "--precision", "fp32"]
code = main(["train", "--precomp", precomp, "--data-root", data_root, "--run-id", "r", "--epochs", "1", "--stage2-epochs", "1", *small])
print("EXIT", code)
"""


def test_a_default_changed_in_its_one_place_reaches_help_schema_and_the_run(tmp_path: Path, tiny_precomp: Path) -> None:
    """Wrong version: a second copy of the default (a CLI flag's ``default=0.2``, a ``TrainConfig``
    field written as ``0.2``, a ``RunSettings`` default) that still says 0.2."""
    copy = tmp_path / "src"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    declared = copy / "webvse_model" / "train.py"
    source = declared.read_text()
    assert source.count("    margin: float = 0.2\n") == 1
    declared.write_text(source.replace("    margin: float = 0.2\n", "    margin: float = 0.35\n"))

    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tiny_precomp), str(tmp_path / "data")],
        capture_output=True, text=True, cwd=copy, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {
        line.split(" ", 1)[0]: line.split(" ", 1)[1]
        for line in result.stdout.splitlines()
        if line[:4] in ("HELP", "SCHE", "EXIT")
    }
    assert "hinge margin of the ranking losses (default: 0.35)" in " ".join(json.loads(lines["HELP"]).split())
    assert json.loads(lines["SCHEMA"])["default"] == 0.35
    assert lines["EXIT"] == "0"
    stored = json.loads((tmp_path / "data" / "runs" / "r" / "config.json").read_text())["settings"]
    assert stored["stage1"]["margin"] == 0.35 and stored["stage2"]["margin"] == 0.35

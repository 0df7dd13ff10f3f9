"""One source of truth (issue 15): a default declared once in ``webvse_model.settings`` reaches
the command line's help, the flow's parameter schema (what YAML files and the Prefect UI
are checked against) and a trained run's stored ``config.json``; the parser reads it without
torch or Prefect; and each room imports only what its layer allows."""

from __future__ import annotations

import ast
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
    declared = copy / "webvse_model" / "settings.py"
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


def test_the_parser_and_every_command_s_help_load_neither_torch_nor_prefect() -> None:
    """``webvse --help`` took ~12 s while the parser's modules imported torch (through the model's
    settings) and Prefect. Wrong version: ``tasks.pipeline_config`` importing ``webvse_model.cnn``
    again, or ``flows.cli`` importing :mod:`flows.commands` at the top."""
    probe = (
        "import sys; from flows.cli import build_parser\n"
        "parser = build_parser(); parser.format_help()\n"
        "for command in parser._subparsers._group_actions[0].choices.values(): command.format_help()\n"
        "print(sorted(m for m in ('torch', 'prefect', 'spacy', 'gensim', 'flows.commands') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


ROOMS = ("crawling", "text", "data", "imaging", "training", "reporting", "serving")


def _forbidden(path: Path) -> tuple[str, ...]:
    """What a production module may not import, by where it lives."""
    parts = path.relative_to(ROOT).parts
    never = ("webvse_world",) if parts[:3] != ("tasks", "steps", "world.py") else ()
    if parts[0] == "storage":
        return (*never, "prefect", "torch", "tasks", "flows", "webvse_model")
    if parts[0] == "webvse_model":
        return (*never, "prefect", "tasks", "flows")
    if parts[0] == "tasks" and len(parts) > 2 and parts[1] in ROOMS:
        return (*never, "prefect", "tasks.steps", "tasks.orchestration", "flows")
    if parts[0] == "tasks":
        return (*never, "flows")
    return never


def test_each_room_imports_only_what_its_layer_allows() -> None:
    """Domain code (``tasks/<room>/``) never imports Prefect, a step or the orchestration; the
    library never imports Prefect; storage neither Prefect nor torch; only the world step reaches
    the offline stand-in. Wrong version: ``tasks/crawling/crawler.py`` importing ``FlickrServer``
    as it once did, or a room calling ``step_logger``."""
    broken = []
    for package in ("storage", "webvse_model", "tasks", "flows"):
        for path in sorted((ROOT / package).rglob("*.py")):
            forbidden = _forbidden(path)
            for module in _imports(path):
                if any(module == name or module.startswith(name + ".") for name in forbidden):
                    broken.append(f"{path.relative_to(ROOT)} imports {module}")
    assert broken == []


def test_the_world_section_s_defaults_are_the_world_generator_s() -> None:
    """The ``world`` section (what the demo and ``webvse world`` use) and the generator's own size
    classes (what the tests and benchmarks call directly) describe one world; production may not
    import the stand-in, so the two declarations are pinned equal here rather than shared.
    Wrong version: one side's ``train: 3000`` changed alone."""
    from tasks.pipeline_config import WorldConfig
    from tasks.steps.world import WorldSettings
    from webvse_world.clean import CleanSizes
    from webvse_world.web import WebSizes

    section = WorldConfig()
    clean, web = CleanSizes(), WebSizes()
    assert (section.train, section.val, section.test) == (clean.train, clean.val, clean.test)
    assert (section.photos_per_object, section.owners, section.nights, section.uploads_per_night) == (
        web.photos_per_object, web.owners, web.nights, web.uploads_per_night,
    )  # fmt: skip
    assert section.seed == WorldSettings().seed

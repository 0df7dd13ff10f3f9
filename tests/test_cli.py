"""The webvse command: train and evaluate end to end, and clear errors on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from webvse_world.web import read_clock

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--embed-dim", "32", "--hidden-dim", "32", "--gru-hidden", "32", "--word-dim", "16", "--device", "cpu"]


def test_train_then_evaluate(tiny_precomp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "--precomp",
        str(tiny_precomp),
        "--data-root",
        str(tmp_path),
        "--run-id",
        "r",
        "--epochs",
        "2",
        "--stage2-epochs",
        "1",
    ]
    assert main(["train", *args, *SMALL]) == 0
    assert "stage2: best val rsum" in capsys.readouterr().out
    assert main(["evaluate", "--data-root", str(tmp_path), "--device", "cpu"]) == 0  # the latest run
    out = capsys.readouterr().out
    assert "image->text" in out and "stage1" in out and "stage2" in out
    assert (tmp_path / "runs" / "r" / "evaluation.parquet").is_file()


@pytest.mark.parametrize(
    ("argv", "message", "may_load"),
    [
        (["train", "--precomp", "/nonexistent/precomp", "--epochs", "1"], "precomp folder /nonexistent/precomp does not exist", {"torch"}),
        (["train", "--precomp", "/nonexistent", "--lr", "-1"], "train.lr: Input should be greater than 0", set()),
        (["evaluate", "--run", "nope"], "no run 'nope' under", set()),
        (["evaluate", "--run", "/no/such/dir"], "no run folder /no/such/dir", set()),
        (["run", "--config", "/no/such/config.yaml"], "configuration file /no/such/config.yaml does not exist", set()),
        (["run", "--set", "train.epochs"], "--set wants KEY=VALUE", set()),
        (["search", "--image", "/no/such.jpg"], "no image file /no/such.jpg", set()),
        (["rollback", "--to", "nope"], "no run 'nope' under", set()),
        (["models"], "", set()),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_not_a_traceback(argv: list[str], message: str, may_load: set[str], tmp_path: Path) -> None:
    """An input error is one line, found before the command loads what it would run with (torch,
    Prefect: ~10 s of a 2-core machine's time); ``webvse models`` never loads them."""
    command = "import sys; from flows.cli import main; code = main(sys.argv[1:]); "
    command += "print(*sorted({'torch', 'prefect'} & set(sys.modules))); sys.exit(code)"
    result = subprocess.run(
        [sys.executable, "-c", command, *argv, "--data-root", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == (2 if message else 0), result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert set(result.stdout.splitlines()[-1].split()) <= may_load, result.stdout


def test_train_without_web_pairs_is_stage_i_only_and_says_so(
    tiny_precomp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stage II is the default, but a precomp folder without web_*.npy trains Stage I and says why
    (wrong version: the run fails with "stage2 is configured but ... has no web pairs")."""
    clean_only = tmp_path / "clean-only"
    clean_only.mkdir()
    for f in tiny_precomp.iterdir():
        if not f.name.startswith("web_"):
            (clean_only / f.name).write_bytes(f.read_bytes())
    assert (
        main(["train", "--precomp", str(clean_only), "--data-root", str(tmp_path), "--run-id", "r", "--epochs", "1", *SMALL]) == 0
    )
    assert "has no web image-tag pairs: Stage I only" in capsys.readouterr().out
    assert (tmp_path / "runs" / "r" / "stage1" / "checkpoints.json").is_file() and not (
        tmp_path / "runs" / "r" / "stage2"
    ).exists()


def test_wrong_feature_dimension_in_a_split_is_named(
    tiny_precomp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_precomp.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    np.save(broken / "dev_ims.npy", np.zeros((40, 7), np.float32))
    assert main(["train", "--precomp", str(broken), "--data-root", str(tmp_path), "--epochs", "1", *SMALL]) == 2
    assert "different feature dimensions" in capsys.readouterr().err


def test_world_then_flickr_server_command(tmp_path: Path) -> None:
    import json
    import signal

    import flickrapi
    import pandas as pd

    argv = ["world", "--data-root", str(tmp_path), "--train", "30", "--val", "5", "--test", "10", "--photos-per-object", "3"]
    assert main(argv) == 0
    assert main(argv) == 0  # the second time reuses the generated world
    corpus = tmp_path / "world" / "corpus"
    assert len(json.loads((tmp_path / "world" / "clean" / "dataset_world.json").read_text())["images"]) == 45
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "WEBVSE_FLICKR_SERVER_KEY": "lab-key-123"}
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "flickr-server", "--corpus", str(corpus), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        banner = server.stdout.readline()  # type: ignore[union-attr]
        url = banner.split(" at ")[1].split()[0]
        api = flickrapi.FlickrAPI("lab-key-123", "s", format="parsed-json", store_token=False)
        api.REST_URL = url
        photos = pd.read_parquet(corpus / "photos.parquet")
        photos = photos[photos["date_upload"] <= read_clock(corpus)]  # later uploads are tomorrow's: not online yet
        with_dog = sum(
            "dog" in {t.lower() for t in tags} | set(title.lower().split())
            for tags, title in zip(photos["tags"], photos["title"])
        )
        assert int(api.photos.search(text="dog")["photos"]["total"]) == with_dog  # the key from the environment was accepted
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=60)  # the CLI imports torch and Prefect: slow on a loaded machine
    assert server.returncode == 0, err
    assert "stopped; served 1 API calls" in out
    assert "lab-key-123" not in out + err + banner


def test_world_owners_flag_sets_the_uploaders_and_regenerates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--owners reaches the corpus (the 5-per-owner rule makes it the cap on kept web data);
    a changed value is a different world, never a silently reused one; 0 is refused up front."""
    from storage.tables import FLICKR_CORPUS, read_table

    def owners_in_corpus(owners: int) -> set[str]:
        argv = ["world", "--data-root", str(tmp_path), "--train", "10", "--val", "5", "--test", "5"]
        assert main([*argv, "--photos-per-object", "2", "--owners", str(owners)]) == 0
        corpus = tmp_path / "world" / "corpus"
        photos = read_table(corpus / "photos.parquet", FLICKR_CORPUS)
        online = photos[photos["date_upload"] <= read_clock(corpus)]  # tomorrow's uploads bring new people by design
        return {o for o in online["owner"] if not o.startswith("9")}  # without the keyword-flooding owners

    assert len(owners_in_corpus(3)) <= 3
    assert len(owners_in_corpus(200)) > 3  # regenerated, not reused: the marker holds the sizes
    assert "served from the cache" not in capsys.readouterr().out
    assert main(["world", "--data-root", str(tmp_path), "--owners", "0"]) == 2
    assert "world.owners: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_world_keywords_vectors_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    from storage.tables import KEYWORDS, read_table
    from tasks.imaging.features import features_id
    from tasks.text.word_vectors import load_keyed_vectors

    root = ["--data-root", str(tmp_path)]
    assert main(["keywords", *root]) == 2  # no world yet: a clear error
    assert "webvse world" in capsys.readouterr().err
    assert main(["world", *root, "--train", "60", "--val", "5", "--test", "10", "--photos-per-object", "2"]) == 0
    assert main(["keywords", *root, "--top-n", "50"]) == 0
    keywords = read_table(tmp_path / "keywords.parquet", KEYWORDS)
    assert 0 < len(keywords) <= 50 and keywords["rank"].tolist() == list(range(1, len(keywords) + 1))
    crawl = ["crawl", *root, "--corpus", str(tmp_path / "world" / "corpus"), "--per-keyword", "3", "--max-keywords", "5"]
    assert main(crawl) == 0
    photos = pd.read_parquet(tmp_path / "web" / "photos.parquet")
    kept = int((photos["status"] == "kept").sum())
    assert f"kept {kept} in all" in capsys.readouterr().out
    assert 0 < kept <= 15 and set(photos["keyword"]) <= set(keywords["keyword"].head(5))
    assert main(["vectors", *root, "--dim", "16"]) == 0
    vectors = load_keyed_vectors(tmp_path / "vectors" / "word_vectors.bin")
    assert vectors.vector_size == 16 and keywords["keyword"].iloc[0] in vectors.key_to_index
    assert main(["features", *root, "--workers", "0", "--batch-size", "16", "--device", "cpu"]) == 0
    assert "0 failed" in capsys.readouterr().out
    feature_model = features_id("efficientnet-lite0", "cpu", "auto")  # -bf16 on a CPU with native bf16
    shards = list((tmp_path / "features" / feature_model).glob("part-*.parquet"))
    encoded = pd.concat([pd.read_parquet(p) for p in shards])
    assert (
        len(encoded)
        == 75 + (photos["status"] == "kept").sum() - photos.loc[photos["status"] == "kept", "sha256"].duplicated().sum()
    )
    # Stage I with the tag loss straight from the data root: dummy tags + word vectors -> tag vectors
    train = ["train", *root, "--parquet-root", str(tmp_path), "--feature-model", feature_model,
             "--run-id", "pq", "--epochs", "1", "--embed-dim", "32", "--hidden-dim", "32", "--gru-hidden", "32",
             "--word-dim", "16", "--device", "cpu"]  # fmt: skip
    # and Stage II on the crawled web photos: their features and English tags from the same data root
    assert main([*train, "--stage2-epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "tags 16-d" in out and "stage2: best val rsum" in out


def _webvse(*argv: str, **popen: object) -> subprocess.Popen[str]:
    """``webvse`` in its own process group with SIGINT at its default, as in a terminal
    (a background job of a non-interactive shell inherits SIGINT ignored)."""
    import signal

    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *argv], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen,
    )  # fmt: skip


@pytest.mark.slow
def test_a_data_root_that_is_not_a_writable_folder_is_one_line(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("x")
    process = _webvse("run", "--data-root", str(not_a_folder), "--steps", "world")
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 2, out
    assert f"webvse: error: data root {not_a_folder} is not a writable folder" in out
    assert "Traceback" not in out


@pytest.mark.slow
def test_one_ctrl_c_stops_the_run_marks_it_crashed_and_exits_130(tmp_path: Path) -> None:
    """One SIGINT to the whole process group (what a terminal's Ctrl-C sends, the temporary
    Prefect server included): the run stops, its state is recorded, one line, exit 130."""
    import os
    import re
    import signal

    import yaml
    from pipeline_support import TINY

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "data_root": str(tmp_path / "data")}))
    process = _webvse("run", "--config", str(config))
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:  # interrupt inside a task, once the world is being rendered
        lines.append(line)
        if "world: rendering" in line:
            break
    os.killpg(process.pid, signal.SIGINT)
    rest, _ = process.communicate(timeout=60)  # before the fix: ~95 s of retries against the dead server, then a hang
    out = "".join(lines) + rest
    assert process.returncode == 130, out
    assert "webvse: interrupted; the same command resumes where it stopped" in out
    assert "Traceback" not in out and "Error logging to API" not in out and "Connection refused" not in out, out
    run_name = re.search(r"Flow run '([^']+)' - Beginning flow run", out)
    assert run_name, out
    assert f"Flow run '{run_name.group(1)}' - Finished in state Crashed('Execution was aborted by an interrupt signal.')" in out


def test_output_cut_short_by_its_reader_ends_quietly(tmp_path: Path) -> None:
    """`webvse models | head -1` style: the reader closes the pipe first; no BrokenPipeError traceback."""
    command = [sys.executable, "-c", "import sys; from flows.cli import main; sys.stdout.flush(); sys.exit(main(sys.argv[1:]))",
               "models", "--data-root", str(tmp_path)]  # fmt: skip
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the first write fails with EPIPE
    done = subprocess.run(command, stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(writer)
    assert done.returncode == 141 and "Traceback" not in done.stderr, done.stderr

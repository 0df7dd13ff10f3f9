"""Atomic writes, table schemas, shards, checkpoint manifest, data-root layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from storage.atomic import atomic_write, atomic_write_text
from storage.checkpoints import CheckpointError, CheckpointStore
from storage.layout import DataRoot
from storage.tables import (
    KEYWORDS,
    TableError,
    append_rows,
    append_shard,
    feature_schema,
    features_matrix,
    read_shards,
    read_table,
    write_table,
)


def test_a_crash_during_a_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "table.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_write(target) as handle:
            handle.write(b"half of the new con")
            raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.txt"]  # no temp file left


def test_table_round_trip_casts_to_the_schema(tmp_path: Path) -> None:
    frame = pd.DataFrame({"keyword": ["dog", "cat"], "count": [5, 3], "rank": [1, 2], "variants": [["dog", "dogs"], ["cat"]]})
    write_table(tmp_path / "k.parquet", frame, KEYWORDS)
    back = read_table(tmp_path / "k.parquet", KEYWORDS)
    assert back["keyword"].tolist() == ["dog", "cat"]
    assert [list(v) for v in back["variants"]] == [["dog", "dogs"], ["cat"]]


def test_table_errors_name_the_file_and_columns(tmp_path: Path) -> None:
    with pytest.raises(TableError, match=r"missing columns \['variants'\]"):
        write_table(tmp_path / "k.parquet", pd.DataFrame({"keyword": ["a"], "count": [1], "rank": [1]}), KEYWORDS)
    with pytest.raises(TableError, match="no table at"):
        read_table(tmp_path / "absent.parquet", KEYWORDS)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(TableError, match="junk.parquet is not a readable Parquet file"):
        read_table(tmp_path / "junk.parquet", KEYWORDS)
    bad = pd.DataFrame({"keyword": ["a"], "count": ["many"], "rank": [1], "variants": [["a"]]})
    with pytest.raises(TableError, match="do not fit the schema"):
        write_table(tmp_path / "k.parquet", bad, KEYWORDS)


def test_append_rows_keeps_old_rows(tmp_path: Path) -> None:
    row = {"keyword": ["dog"], "count": [5], "rank": [1], "variants": [["dog"]]}
    append_rows(tmp_path / "k.parquet", pd.DataFrame(row), KEYWORDS)
    append_rows(tmp_path / "k.parquet", pd.DataFrame({**row, "keyword": ["cat"]}), KEYWORDS)
    assert read_table(tmp_path / "k.parquet", KEYWORDS)["keyword"].tolist() == ["dog", "cat"]


def test_feature_shards_round_trip(tmp_path: Path) -> None:
    spec = feature_schema(3)
    assert read_shards(tmp_path / "f", spec).num_rows == 0
    for start in (0, 2):
        vectors = np.arange(start * 3, start * 3 + 6, dtype=np.float32).reshape(2, 3)
        append_shard(tmp_path / "f", pd.DataFrame({"sha256": [f"h{start}", f"h{start + 1}"], "feature": list(vectors)}), spec)
    table = read_shards(tmp_path / "f", spec)
    assert sorted(table.column("sha256").to_pylist()) == ["h0", "h1", "h2", "h3"]
    matrix = features_matrix(table, 3)
    assert matrix.dtype == np.float32 and matrix.shape == (4, 3)
    assert sorted(matrix[:, 0].tolist()) == [0.0, 3.0, 6.0, 9.0]
    with pytest.raises(TableError, match="do not fit"):
        append_shard(tmp_path / "f", pd.DataFrame({"sha256": ["x"], "feature": [np.zeros(4, np.float32)]}), spec)


def test_checkpoints_are_verified_against_the_manifest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save("last", lambda h: h.write(b"weights v1"), {"epoch": 1})
    assert store.load("last", lambda h: h.read()) == b"weights v1"
    assert store.records()["last"].meta == {"epoch": 1}
    (tmp_path / "last.pt").write_bytes(b"weights v2")  # same size, other bytes
    with pytest.raises(CheckpointError, match="last.pt is corrupt"):
        store.load("last", lambda h: h.read())
    with pytest.raises(CheckpointError, match="no checkpoint 'best'"):
        store.load("best", lambda h: h.read())


def test_a_failing_deserialiser_is_reported_with_the_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save("last", lambda h: h.write(b"x"))

    def explode(handle: object) -> None:
        raise KeyError("model")

    with pytest.raises(CheckpointError, match=r"last\.pt could not be loaded"):
        store.load("last", explode)


def test_orphan_temp_files_are_swept(tmp_path: Path) -> None:
    (tmp_path / ".last.pt.abc.tmp").write_bytes(b"partial")
    store = CheckpointStore(tmp_path)
    assert [p.name for p in store.sweep_orphans()] == [".last.pt.abc.tmp"]
    assert not list(tmp_path.iterdir())


def test_data_root_paths_and_safety(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBVSE_DATA_ROOT", str(tmp_path / "env-root"))
    root = DataRoot.resolve()
    assert root.root == tmp_path / "env-root"
    assert DataRoot.resolve(tmp_path).clean_captions == tmp_path / "clean" / "captions.parquet"
    digest = "ab" + "0" * 62
    assert root.web_image(digest) == root.root / "web" / "images" / "ab" / f"{digest}.jpg"
    with pytest.raises(ValueError, match="not a sha256"):
        root.web_image("../../etc/passwd")
    with pytest.raises(ValueError, match="not a safe folder name"):
        root.run_dir("../escape")
    assert root.latest_run() is None


def test_readers_never_see_a_torn_table_while_it_is_replaced(tmp_path: Path) -> None:
    import threading

    target = tmp_path / "k.parquet"
    errors: list[Exception] = []
    stop = threading.Event()

    def frame(n: int) -> pd.DataFrame:
        return pd.DataFrame({"keyword": [f"w{i}" for i in range(n)], "count": list(range(n)), "rank": list(range(n)),
                             "variants": [[f"v{i}"] * (i % 3) for i in range(n)]})  # fmt: skip

    write_table(target, frame(1), KEYWORDS)

    def reader() -> None:
        while not stop.is_set():
            try:
                read_table(target, KEYWORDS)
            except Exception as exc:  # any torn read is a failure
                errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for n in range(2, 300):
        write_table(target, frame(n % 50 + 1), KEYWORDS)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:1]

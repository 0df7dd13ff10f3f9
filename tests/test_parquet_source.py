"""Training and evaluation from a webvse data root (Parquet tables + feature shards)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from flows.cli import main
from storage.layout import DataRoot
from storage.tables import CLEAN_CAPTIONS, CLEAN_IMAGES, append_shard, feature_schema, write_table
from tasks.data.training_data import DataSource, read_split
from webvse_model.datasets.precomp import read_precomp_split

SPLITS = {"train": "train", "dev": "val", "test": "test"}


def _data_root_from_precomp(precomp: Path, root: DataRoot, drop_feature_of: str | None = None) -> None:
    images, captions = [], []
    for precomp_split, split in SPLITS.items():
        data = read_precomp_split(precomp, precomp_split)
        shas = [hashlib.sha256(f"{split}-{i}".encode()).hexdigest() for i in range(len(data.features))]
        for i, sha in enumerate(shas):
            images.append({"image_id": f"{split}-{i}", "split": split, "path": f"img/{split}-{i}.jpg", "sha256": sha})
            for j in range(5):
                text = data.captions[5 * i + j]
                captions.append({"caption_id": f"{split}-{i}-{j}", "image_id": f"{split}-{i}", "split": split,
                                 "text": text, "tokens": text.split(), "dummy_tags": []})  # fmt: skip
        rows = pd.DataFrame({"sha256": shas, "feature": list(data.features)})
        rows = rows[rows["sha256"] != drop_feature_of]
        append_shard(root.features_dir("synthetic"), rows, feature_schema(data.features.shape[1]))
    write_table(root.clean_images, pd.DataFrame(images), CLEAN_IMAGES)
    write_table(root.clean_captions, pd.DataFrame(captions).sample(frac=1, random_state=0), CLEAN_CAPTIONS)


def test_parquet_split_matches_the_precomp_split(tiny_precomp: Path, tmp_path: Path) -> None:
    root = DataRoot.resolve(tmp_path)
    _data_root_from_precomp(tiny_precomp, root)
    from_parquet = read_split(DataSource(str(tmp_path), "parquet", feature_model="synthetic"), "test")
    from_precomp = read_split(DataSource(str(tiny_precomp)), "test")
    assert (from_parquet.features == from_precomp.features).all()
    assert from_parquet.captions == from_precomp.captions  # shuffled rows come back grouped, in order
    assert from_parquet.caption_image.tolist() == from_precomp.caption_image.tolist()


def test_train_and_evaluate_from_a_data_root(tiny_precomp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _data_root_from_precomp(tiny_precomp, DataRoot.resolve(tmp_path))
    argv = ["train", "--parquet-root", str(tmp_path), "--feature-model", "synthetic", "--data-root", str(tmp_path),
            "--run-id", "pq", "--epochs", "1", "--lambda-tag", "0", "--embed-dim", "32", "--hidden-dim", "32",
            "--gru-hidden", "32", "--word-dim", "16", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert main(["evaluate", "--run", "pq", "--data-root", str(tmp_path), "--device", "cpu"]) == 0
    assert "stage1" in capsys.readouterr().out


def test_an_image_without_features_is_named(tiny_precomp: Path, tmp_path: Path) -> None:
    missing = hashlib.sha256(b"test-3").hexdigest()
    _data_root_from_precomp(tiny_precomp, DataRoot.resolve(tmp_path), drop_feature_of=missing)
    with pytest.raises(ValueError, match=r"1 images of split 'test' have no features .* \(first: img/test-3.jpg\)"):
        read_split(DataSource(str(tmp_path), "parquet", feature_model="synthetic"), "test")

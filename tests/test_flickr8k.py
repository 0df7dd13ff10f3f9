"""The real Flickr8k subset in ../shared: reader, fixed split, and a short real training run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from webvse_model.datasets.flickr8k import flickr8k_to_karpathy, read_flickr8k_captions, split_of
from webvse_model.datasets.karpathy import read_karpathy

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k-1k"


def test_reader_and_split_on_a_written_fixture(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    lines = ["image,caption"]
    for n in range(10):
        (tmp_path / "images" / f"{n}.jpg").write_bytes(b"jpeg")
        lines += [f"{n}.jpg,A dog number {n} runs {j} ." for j in range(5)]
    lines.append('"9.jpg","A caption, with a comma ."')  # 6 captions for image 9: reported
    (tmp_path / "captions.txt").write_text("\n".join(lines))
    assert read_flickr8k_captions(tmp_path / "captions.txt")["9.jpg"][-1] == "A caption, with a comma ."
    with pytest.raises(ValueError, match="1 images do not have exactly 5 captions"):
        flickr8k_to_karpathy(tmp_path / "captions.txt", tmp_path / "images", tmp_path / "out.json")
    (tmp_path / "captions.txt").write_text("\n".join(lines[:-1]))
    counts = flickr8k_to_karpathy(tmp_path / "captions.txt", tmp_path / "images", tmp_path / "out.json")
    assert counts == {"train": 8, "val": 1, "test": 1}
    assert split_of([f"{n}.jpg" for n in range(10)]) == split_of([f"{n}.jpg" for n in reversed(range(10))])  # order-free
    data = read_karpathy(tmp_path / "out.json", image_root=tmp_path / "images")
    assert data.images[0].path == tmp_path / "images" / "0.jpg" and len(data.images[0].captions) == 5


def test_the_shared_subset_converts_to_800_100_100(tmp_path: Path) -> None:
    if not (SHARED / "captions.txt").is_file():
        pytest.skip(f"the shared Flickr8k subset is not at {SHARED}")
    counts = flickr8k_to_karpathy(SHARED / "captions.txt", SHARED / "images", tmp_path / "dataset_flickr8k.json")
    assert counts == {"train": 800, "val": 100, "test": 100}
    images = json.loads((tmp_path / "dataset_flickr8k.json").read_text())["images"]
    assert all((SHARED / "images" / im["filename"]).is_file() for im in images)
    assert sum(len(im["sentences"]) for im in images) == 5000

"""The real Flickr8k subset in ../shared: reader, fixed split, and a short real training run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.data.flickr8k import HASH_SPLIT, flickr8k_to_karpathy, read_flickr8k_captions, split_of
from webvse_model.datasets.karpathy import read_karpathy

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k-1k"
FULL = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"


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
    summary = flickr8k_to_karpathy(tmp_path / "captions.txt", tmp_path / "images", tmp_path / "out.json")
    assert summary.counts == {"train": 8, "val": 1, "test": 1} and summary.split_source == HASH_SPLIT
    assert split_of([f"{n}.jpg" for n in range(10)]) == split_of([f"{n}.jpg" for n in reversed(range(10))])  # order-free
    data = read_karpathy(tmp_path / "out.json", image_root=tmp_path / "images")
    assert data.images[0].path == tmp_path / "images" / "0.jpg" and len(data.images[0].captions) == 5


def test_the_shared_subset_converts_to_800_100_100(tmp_path: Path) -> None:
    if not (SHARED / "captions.txt").is_file():
        pytest.skip(f"the shared Flickr8k subset is not at {SHARED}")
    summary = flickr8k_to_karpathy(SHARED / "captions.txt", SHARED / "images", tmp_path / "dataset_flickr8k.json")
    assert summary.counts == {"train": 800, "val": 100, "test": 100}
    assert summary.missing_images == 0 and summary.split_source == HASH_SPLIT
    images = json.loads((tmp_path / "dataset_flickr8k.json").read_text())["images"]
    assert all((SHARED / "images" / im["filename"]).is_file() for im in images)
    assert sum(len(im["sentences"]) for im in images) == 5000


def _standard_split_fixture(folder: Path, rows: list[tuple[str, str]], with_files: bool = True) -> Path:
    """A captions.csv in the full set's format: ``(image, split)`` rows, 5 captions each."""
    (folder / "images").mkdir(exist_ok=True)
    lines = ["image,split,caption_idx,caption"]
    for image, split in rows:
        if with_files:
            (folder / "images" / image).write_bytes(b"jpeg")
        lines += [f"{image},{split},{j},A dog runs across {image} number {j} ." for j in range(5)]
    (folder / "captions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "captions.csv"


def test_the_split_column_is_kept_as_given_and_extra_images_are_left_out(tmp_path: Path) -> None:
    # names whose hash split would differ: a reader that ignored the column would move them
    rows = [(f"{n}.jpg", "test") for n in range(6)] + [("a.jpg", "train"), ("b.jpg", "val"), ("c.jpg", "extra")]
    csv_path = _standard_split_fixture(tmp_path, rows)
    (tmp_path / "images" / "5.jpg").unlink()  # listed, file missing: skipped and counted
    summary = flickr8k_to_karpathy(csv_path, tmp_path / "images", tmp_path / "out.json")
    assert summary.counts == {"train": 1, "val": 1, "test": 5}
    assert (summary.missing_images, summary.first_missing, summary.unofficial) == (1, "5.jpg", 1)
    assert summary.split_source == "the file's split column"
    written = {im["filename"]: im["split"] for im in json.loads((tmp_path / "out.json").read_text())["images"]}
    assert written == {
        "0.jpg": "test",
        "1.jpg": "test",
        "2.jpg": "test",
        "3.jpg": "test",
        "4.jpg": "test",
        "a.jpg": "train",
        "b.jpg": "val",
    }


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("a.jpg", "train"), ("b.jpg", "dev")], "line 7 has split 'dev'"),
        ([("a.jpg", "train"), ("b.jpg", "val"), ("a.jpg", "test")], "puts a.jpg in 'test', an earlier line in 'train'"),
    ],
)
def test_a_bad_split_value_is_an_error_naming_the_line(tmp_path: Path, rows: list[tuple[str, str]], message: str) -> None:
    csv_path = _standard_split_fixture(tmp_path, rows)
    with pytest.raises(ValueError, match=message):
        flickr8k_to_karpathy(csv_path, tmp_path / "images", tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_a_line_that_is_not_utf8_is_an_error_naming_it(tmp_path: Path) -> None:
    csv_path = _standard_split_fixture(tmp_path, [("a.jpg", "train"), ("b.jpg", "test")])
    lines = csv_path.read_bytes().split(b"\n")
    lines[8] = lines[8].replace(b"dog", b"d\xf6g")  # Latin-1, as an old export might hold
    csv_path.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match="line 9 is not UTF-8"):
        read_flickr8k_captions(csv_path)


def test_without_a_split_column_the_hash_split_is_used_and_said(tmp_path: Path) -> None:
    csv_path = _standard_split_fixture(tmp_path, [(f"{n}.jpg", "train") for n in range(10)])
    plain = ["image,caption"] + [
        f"{line.split(',')[0]},{line.split(',', 3)[3]}" for line in csv_path.read_text().splitlines()[1:]
    ]
    csv_path.write_text("\n".join(plain))
    summary = flickr8k_to_karpathy(csv_path, tmp_path / "images", tmp_path / "out.json")
    assert summary.split_source == HASH_SPLIT and summary.counts == {"train": 8, "val": 1, "test": 1}


def test_the_full_shared_set_keeps_the_standard_6000_1000_1000_split(tmp_path: Path) -> None:
    if not (FULL / "captions.csv").is_file():
        pytest.skip(f"the shared Flickr8k set is not at {FULL}")
    summary = flickr8k_to_karpathy(FULL / "captions.csv", FULL / "images", tmp_path / "dataset_flickr8k.json")
    assert summary.counts == {"train": 6000, "val": 1000, "test": 1000}
    assert (summary.unofficial, summary.missing_images) == (91, 0)

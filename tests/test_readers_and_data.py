"""Karpathy and precomp readers on files written here, and the data checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from webvse_model.data import CaptionedImages, WebPairs, batch_slices, epoch_order, pad_token_ids
from webvse_model.datasets.karpathy import read_karpathy
from webvse_model.datasets.precomp import read_precomp_split, read_precomp_web


def _karpathy(tmp_path: Path) -> Path:
    images = [
        {"filename": "a.jpg", "filepath": "train2014", "split": "train", "cocoid": 11,
         "sentences": [{"raw": "A dog runs.", "tokens": ["a", "dog", "runs"]}, {"raw": "", "tokens": []}]},
        {"filename": "b.jpg", "split": "restval", "imgid": 2, "sentences": [{"raw": "Two Cats", "tokens": []}]},
        {"filename": "c.jpg", "split": "test", "sentences": [{"raw": "a boat", "tokens": ["a", "boat"]}]},
    ]  # fmt: skip
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": "coco", "images": images}))
    return path


def test_karpathy_reader(tmp_path: Path) -> None:
    data = read_karpathy(_karpathy(tmp_path), image_root=tmp_path / "imgs")
    assert data.name == "coco"
    assert [r.image_id for r in data.images] == ["11", "2", "c"]
    assert [r.split for r in data.images] == ["train", "train", "test"]  # restval folded into train
    assert data.images[0].path == tmp_path / "imgs" / "train2014" / "a.jpg"
    assert data.images[1].tokens == (("two", "cats"),)  # tokens from raw when absent
    assert data.empty_captions == 1
    assert data.counts == {"train": 2, "test": 1}
    assert read_karpathy(_karpathy(tmp_path), use_restval=False).images[1].split == "restval"


def test_karpathy_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_karpathy(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        read_karpathy(tmp_path / "bad.json")
    (tmp_path / "split.json").write_text(json.dumps({"images": [{"filename": "x.jpg", "sentences": [], "split": "holdout"}]}))
    with pytest.raises(ValueError, match=r"images\[0\] has split 'holdout'"):
        read_karpathy(tmp_path / "split.json")


def test_precomp_reader_accepts_both_row_layouts(tmp_path: Path) -> None:
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    captions = [f"caption {i}" for i in range(15)]
    np.save(tmp_path / "test_ims.npy", features)
    (tmp_path / "test_caps.txt").write_text("\n".join(captions) + "\n")
    per_image = read_precomp_split(tmp_path, "test")
    np.save(tmp_path / "dev_ims.npy", np.repeat(features, 5, axis=0))  # one row per caption
    (tmp_path / "dev_caps.txt").write_text("\n".join(captions) + "\n")
    per_caption = read_precomp_split(tmp_path, "dev")
    np.testing.assert_array_equal(per_image.features, features)
    np.testing.assert_array_equal(per_caption.features, features)
    assert per_image.captions == captions and per_image.tag_vectors is None


def test_precomp_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train_ims.npy"):
        read_precomp_split(tmp_path, "train")
    np.save(tmp_path / "train_ims.npy", np.zeros((3, 4), np.float32))
    (tmp_path / "train_caps.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="train_caps.txt has 2 captions for 3 rows"):
        read_precomp_split(tmp_path, "train")
    np.save(tmp_path / "web_ims.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(FileNotFoundError, match="lacks"):
        read_precomp_web(tmp_path)


def _captioned(features: np.ndarray, **kw: object) -> CaptionedImages:
    tokens, lengths = pad_token_ids([[1, 5, 2], [1, 6, 7, 2]])
    return CaptionedImages(features, tokens, lengths, np.array([0, 1]), **kw)  # type: ignore[arg-type]


def test_captioned_images_reject_bad_input() -> None:
    ok = np.ones((2, 3), np.float32)
    assert _captioned(ok).num_captions == 2
    with pytest.raises(ValueError, match="1 rows contain NaN"):
        _captioned(np.array([[1, np.nan, 0], [0, 0, 0]], np.float32))
    with pytest.raises(ValueError, match="outside 0..0"):
        _captioned(ok[:1])
    with pytest.raises(ValueError, match="3 tag vectors for 2 images"):
        _captioned(ok, tag_vectors=np.ones((3, 4)))
    with pytest.raises(ValueError, match="exactly 5 captions per image"):
        _captioned(ok).check_grouped(5)
    untagged = _captioned(ok, tag_vectors=np.array([[1.0, 0], [0, 0]]))
    assert untagged.images_without_tags == 1  # counted, and kept out of the tag loss
    with pytest.raises(ValueError, match="need equal, non-zero numbers"):
        WebPairs(np.ones((2, 3)), np.ones((3, 2)), np.ones(2))


def test_epoch_order_is_a_function_of_seed_and_epoch() -> None:
    assert np.array_equal(epoch_order(50, 1, 3), epoch_order(50, 1, 3))
    assert not np.array_equal(epoch_order(50, 1, 3), epoch_order(50, 1, 4))
    assert sorted(epoch_order(50, 1, 3).tolist()) == list(range(50))
    assert [len(b) for b in batch_slices(np.arange(9), 4)] == [4, 4]  # a batch of 1 has no negative

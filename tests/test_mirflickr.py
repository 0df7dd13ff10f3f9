"""MIRFLICKR as a corpus of the local Flickr server: real photos and real tags through the real crawl."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_crawl import FAST, crawled, make_root

from storage.tables import FLICKR_CORPUS, read_table
from tasks.steps.world import crawl_local
from webvse_world.mirflickr import import_mirflickr, owner_of

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mirflickr"
needs_shared = pytest.mark.skipif(not (SHARED / "tags.csv").is_file(), reason=f"MIRFLICKR is not at {SHARED}")


def _source(folder: Path, rows: list[tuple[str, str]], copy_images: bool = True) -> Path:
    """A MIRFLICKR-format folder: ``(image, tags)`` rows; images copied from the shared set."""
    (folder / "images").mkdir(parents=True)
    lines = ["image,mirflickr_id,tags,concepts"]
    for image, tags in rows:
        number = image.removeprefix("im").removesuffix(".jpg")
        lines.append(f"{image},{number},{tags},sky")
        if copy_images:
            shutil.copy(SHARED / "images" / image, folder / "images" / image)
    (folder / "tags.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@needs_shared
def test_real_tags_are_crawled_through_the_rules_and_the_owner_rule_cannot_bind(tmp_path: Path) -> None:
    shared = pd.read_csv(SHARED / "tags.csv")
    # real photos and their real tags: every photo tagged 'sky', and a copy of the first one's tags
    sky = shared[shared["tags"].str.split().apply(lambda t: "sky" in t)].head(12)
    rows = list(zip(sky["image"], sky["tags"]))
    assert rows[0][0] == "im6.jpg"
    first = rows[0][1].split()
    twin_tags = " ".join(first[:5] + ["zzzextra"])  # same first five tags as the first photo
    rows += [("im20001.jpg", twin_tags), ("im20002.jpg", ""), ("im20003.jpg", "sky cielo")]
    source = _source(tmp_path / "mir", rows[:12], copy_images=True)
    for image in ("im20001.jpg", "im20002.jpg"):
        shutil.copy(SHARED / "images" / rows[0][0], source / "images" / image)
    with open(source / "tags.csv", "a", encoding="utf-8") as handle:  # im20003 has no image file
        handle.write("".join(f"{image},{image[2:-4]},{tags},sky\n" for image, tags in rows[12:]))

    result = import_mirflickr(source, tmp_path / "corpus")
    assert (result.photos, result.missing_images, result.without_tags) == (13, 1, 1)
    corpus = read_table(result.table, FLICKR_CORPUS)
    assert corpus["owner"].nunique() == 13 and corpus["owner"].iloc[0] == owner_of(corpus["photo_id"].iloc[0])
    assert all(Path(f).is_absolute() and Path(f).is_file() for f in corpus["file"])  # read in place, never copied

    root = make_root(tmp_path / "root", ["sky"])
    summary = crawl_local(root, str(tmp_path / "corpus"), log=lambda m: None, **FAST)
    status = crawled(root)["status"]
    # im6 ("iceland ice sky pink white ...") and its twin: whichever the search lists first is kept
    assert sorted(status[["6", "20001"]]) == ["kept", "rejected:same_first_tags"]
    assert status.drop(["6", "20001"]).isin(["kept", "rejected:few_english_tags"]).all()
    assert (status == "kept").sum() >= 8  # real tags: most of these photos have two English words
    assert summary["statuses"].get("rejected:owner_limit", 0) == 0  # one owner per photo: never binds
    kept = crawled(root)[status == "kept"]
    assert all((root.root / p).is_file() for p in kept["path"])  # downloaded over HTTP from the local server


def test_bad_rows_are_counted_and_a_bad_file_is_an_error_naming_it(tmp_path: Path) -> None:
    source = tmp_path / "mir"
    (source / "images").mkdir(parents=True)
    (source / "tags.csv").write_text("image,mirflickr_id,tags\nim1.jpg,1,dog\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no photo has both an image file and a tag"):
        import_mirflickr(source, tmp_path / "corpus")
    (source / "tags.csv").write_bytes("image,mirflickr_id,tags\nim1.jpg,1,dog\nim2.jpg,2,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="line 3 is not UTF-8"):
        import_mirflickr(source, tmp_path / "corpus")
    (source / "tags.csv").write_text("image,tags\nim1.jpg,dog\n", encoding="utf-8")
    with pytest.raises(ValueError, match="must have the columns"):
        import_mirflickr(source, tmp_path / "corpus")
    (source / "tags.csv").write_text("image,mirflickr_id,tags\nim1.jpg,x1,dog\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 has mirflickr_id 'x1'"):
        import_mirflickr(source, tmp_path / "corpus")

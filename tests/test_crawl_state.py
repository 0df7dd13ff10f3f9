"""The crawl's committed state: incremental commits write what a full rebuild would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from storage.layout import DataRoot
from storage.tables import WEB_PHOTOS, read_table, write_table
from tasks.crawling.state import KEYWORD_DONE, CrawlState

UNTIL = 1_500_000_000  # the night's upload-time bound: a keyword's "finished" row is (keyword, KEYWORD_DONE, UNTIL)


def _row(i: int, keyword: str, status: str = "kept", owner: str | None = None) -> dict[str, Any]:
    return {
        "photo_id": str(1000 + i), "owner": owner or f"{i}@N01", "keyword": keyword, "keyword_rank": 1, "keywords": [keyword],
        "tags": [f"t{i}", "dog", "beach"], "english_tags": ["dog", "beach"], "title": f"photo {i}", "license": 4,
        "url": f"https://live.staticflickr.com/1/{1000 + i}_s_m.jpg", "path": f"images/{i}.jpg", "sha256": f"{i:064x}",
        "width": 240, "height": 180, "status": status, "fetched_at": "2026-11-23T00:00:00+00:00", "night": 1,
    }  # fmt: skip


def _full_rebuild(rows: list[dict[str, Any]], path: Path) -> Path:
    """What the crawl wrote before commits became incremental: every row rebuilt, in decision order."""
    return write_table(path, pd.DataFrame(rows, columns=WEB_PHOTOS.columns), WEB_PHOTOS)


def _with_lists(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(**{c: frame[c].map(list) for c in ("keywords", "tags", "english_tags")})


def _on_disk(root: DataRoot) -> pd.DataFrame:
    return _with_lists(read_table(root.web_photos, WEB_PHOTOS))


def test_commits_write_every_decision_in_order_with_changed_rows_in_place(tmp_path: Path) -> None:
    root = DataRoot(tmp_path)
    state = CrawlState(root)
    decided = [_row(i, "dog") for i in range(3)]
    for row in decided:
        state.record(row)
    state.commit(("dog", KEYWORD_DONE, UNTIL), 1, True, False, 1)
    decided += [_row(i, "beach", status="rejected:owner_limit") for i in range(3, 5)]
    for row in decided[3:]:
        state.record(row)
    decided[1]["keywords"].append("beach")  # an older photo found again by another keyword
    state.record(decided[1])
    state.commit(("beach", KEYWORD_DONE, UNTIL), 1, True, False, 2)
    rebuilt = _full_rebuild(decided, tmp_path / "rebuilt.parquet")
    assert root.web_photos.read_bytes() == rebuilt.read_bytes()
    assert list(_on_disk(root)["photo_id"]) == ["1000", "1001", "1002", "1003", "1004"]


def test_a_reopened_state_replays_decisions_and_keeps_committing_incrementally(tmp_path: Path) -> None:
    root = DataRoot(tmp_path)
    first = CrawlState(root)
    for row in (_row(0, "dog", owner="a@N01"), _row(1, "dog", owner="a@N01"), _row(2, "dog", status="rejected:few_english_tags")):
        first.record(row)
    first.commit(("dog", KEYWORD_DONE, UNTIL), 1, False, False, 1)
    reopened = CrawlState(root)  # as after a crash: everything comes back from the tables
    assert reopened.owner_kept["a@N01"] == 2 and reopened.kept_for["dog"] == 2
    assert reopened.progress[("dog", KEYWORD_DONE, UNTIL)]["pages_done"] == 1 and not reopened.keyword_done("dog", UNTIL)
    reopened.rows["1000"]["keywords"].append("cat")
    reopened.record(reopened.rows["1000"])
    reopened.record(_row(3, "cat"))
    reopened.commit(("cat", KEYWORD_DONE, UNTIL), 1, True, False, 2)
    on_disk = _on_disk(root)
    assert list(on_disk["photo_id"]) == ["1000", "1001", "1002", "1003"]
    assert on_disk["keywords"].tolist() == [["dog", "cat"], ["dog"], ["dog"], ["cat"]]
    pd.testing.assert_frame_equal(_with_lists(reopened.photos_table().to_pandas()), on_disk)


def test_a_page_with_no_new_decision_leaves_the_photos_file_alone(tmp_path: Path) -> None:
    root = DataRoot(tmp_path)
    state = CrawlState(root)
    state.record(_row(0, "dog"))
    state.commit(("dog", KEYWORD_DONE, UNTIL), 1, False, False, 1)
    before = root.web_photos.stat().st_mtime_ns, root.web_photos.stat().st_ino
    state.commit(("dog", KEYWORD_DONE, UNTIL), 2, True, False, 2)  # every photo on page 2 was already decided
    assert (root.web_photos.stat().st_mtime_ns, root.web_photos.stat().st_ino) == before
    assert CrawlState(root).keyword_done("dog", UNTIL)

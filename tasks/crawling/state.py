"""The crawl's durable state: every decided photo and the pages done, committed per page.

``web/photos.parquet`` (every decision) is the source of truth, rewritten atomically after
each page, then ``web/crawl_progress.parquet``. Rebuilding the whole photos table from
Python dicts at every page made a long crawl quadratic: 2 s per page at 400,000 decided
photos, longer than the API call it follows. So the state keeps the table as last written,
in Arrow, and a commit converts only the rows decided or changed since (a page's new
photos, and older photos that another keyword found again), splices them in by decision
order and writes; the file is byte-for-byte what the full rebuild wrote
(``benchmarks/bench_crawl_commit.py``).

**Nights.** A crawl is a sequence of nights (``web/crawl_nights.parquet``). Each night
searches every keyword up to one fixed upload time, ``until`` (the clock when the night
began, kept so that a resumed night searches the same windows); a keyword is searched
from just after the ``until`` of the last night that finished it, so a later night meets
only photos uploaded since. Every decision records its night; the owner and first-5-tags
rules replay over all nights' photos, so they hold across the whole accumulated corpus.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from storage.layout import DataRoot
from storage.tables import CRAWL_NIGHTS, CRAWL_PROGRESS, WEB_PHOTOS, TableSchema, read_arrow, read_table, write_table
from tasks.crawling.rules import first_tags_key

KEYWORD_DONE = -1  # window_start of a keyword's "finished for this night" row (window_end = the night's until)


def _read_or_empty(path: Path, spec: TableSchema) -> pd.DataFrame:
    return read_table(path, spec) if path.is_file() else pd.DataFrame(columns=spec.columns)


class CrawlState:
    """Every decision so far, and the counters the filters need, rebuilt from the tables."""

    def __init__(self, root: DataRoot, first_tags: int = 5) -> None:
        self.root, self.first_tags = root, first_tags
        written = read_arrow(root.web_photos, WEB_PHOTOS) if root.web_photos.is_file() else WEB_PHOTOS.schema.empty_table()
        self.rows: dict[str, dict[str, Any]] = {row["photo_id"]: row for row in written.to_pylist()}
        self._position = {photo_id: i for i, photo_id in enumerate(self.rows)}
        self._written = written  # as last committed, in decision order: row i is position i
        self._changed: set[str] = set()
        self.owner_kept: Counter[str] = Counter()
        self.first_kept: set[tuple[str, ...]] = set()
        self.kept_for: Counter[str] = Counter()
        for row in self.rows.values():  # replay: the filters' counters follow from the stored photos
            if row["status"] == "kept":
                self.count_kept(row)
        progress = _read_or_empty(root.crawl_progress, CRAWL_PROGRESS)
        self.progress = {(r["keyword"], int(r["window_start"]), int(r["window_end"])): r for r in progress.to_dict("records")}
        self.nights: list[dict[str, Any]] = _read_or_empty(root.crawl_nights, CRAWL_NIGHTS).to_dict("records")
        if not self.nights and self.rows:
            self._adopt_unnamed_night()
        self._kept_before: Counter[str] = Counter()

    def _adopt_unnamed_night(self) -> None:
        """A crawl made before nights were recorded becomes night 1, searched up to its last download
        (when it ran, it could see nothing uploaded later); its keywords' "finished" rows, written with
        ``window_end = -1`` then, are moved to that bound. Written at the next commit."""
        until = max(int(datetime.fromisoformat(row["fetched_at"]).timestamp()) for row in self.rows.values())
        for (keyword, start, end), row in list(self.progress.items()):
            if start == KEYWORD_DONE and end == -1:
                del self.progress[(keyword, start, end)]
                self.progress[(keyword, start, until)] = {**row, "window_end": until}
        kept = sum(row["status"] == "kept" for row in self.rows.values())
        earliest = min(row["fetched_at"] for row in self.rows.values())
        finished = all(row["done"] for (_, start, _), row in self.progress.items() if start == KEYWORD_DONE)
        self.nights = [{"night": 1, "mode": "incremental", "until": until, "started_at": earliest, "finished": finished,
                        "new_kept": kept, "kept_total": kept, "api_calls": 0}]  # fmt: skip

    # ---------------------------------------------------------------- nights
    @property
    def night(self) -> dict[str, Any]:
        """The night in progress (see :meth:`open_night`)."""
        return self.nights[-1]

    def open_night(self, mode: str, now: int) -> dict[str, Any]:
        """Resume the unfinished night, or begin the next one with ``until = now``."""
        if not self.nights or self.nights[-1]["finished"]:
            number = len(self.nights) + 1
            started = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self.nights.append({"night": number, "mode": mode, "until": int(now), "started_at": started, "finished": False,
                                "new_kept": 0, "kept_total": 0, "api_calls": 0})  # fmt: skip
            self._write_nights()
        number = self.night["night"]
        self._kept_before = Counter(r["keyword"] for r in self.rows.values() if r["status"] == "kept" and r["night"] < number)
        return self.night

    def keyword_since(self, keyword: str) -> int | None:
        """The upload time up to which ``keyword`` was searched by a finished night (None: never)."""
        ends = [
            end for (word, start, end), row in self.progress.items() if word == keyword and start == KEYWORD_DONE and row["done"]
        ]
        return max(ends, default=None)

    def kept_before_night(self, keyword: str) -> int:
        """Photos kept for ``keyword`` by earlier nights: this night's quota comes on top."""
        return self._kept_before[keyword]

    def finish_night(self, api_calls: int) -> dict[str, Any]:
        night = self.night
        kept = [r for r in self.rows.values() if r["status"] == "kept"]
        night.update(finished=True, new_kept=sum(r["night"] == night["night"] for r in kept), kept_total=len(kept),
                     api_calls=int(night["api_calls"]) + api_calls)  # fmt: skip
        self._write_nights()
        return night

    def _write_nights(self) -> None:
        write_table(self.root.crawl_nights, pd.DataFrame(self.nights), CRAWL_NIGHTS)

    def count_kept(self, row: dict[str, Any]) -> None:
        self.owner_kept[row["owner"]] += 1
        self.first_kept.add(first_tags_key(row["tags"], self.first_tags))
        self.kept_for[row["keyword"]] += 1

    def uncount_kept(self, row: dict[str, Any]) -> None:
        """A photo chosen for keeping whose download failed: it takes no quota, owner slot or tag key."""
        self.owner_kept[row["owner"]] -= 1
        self.first_kept.discard(first_tags_key(row["tags"], self.first_tags))
        self.kept_for[row["keyword"]] -= 1

    def record(self, row: dict[str, Any]) -> None:
        """A new decision, or a change to a known one (call after changing it): written at the next commit."""
        photo_id = row["photo_id"]
        self._position.setdefault(photo_id, len(self._position))
        self.rows[photo_id] = row
        self._changed.add(photo_id)

    def keyword_done(self, keyword: str, until: int) -> bool:
        """``keyword`` was searched up to ``until`` (this night's bound) to the end."""
        return bool(self.progress.get((keyword, KEYWORD_DONE, until), {}).get("done", False))

    def photos_table(self) -> pa.Table:
        """Every decision in decision order: the written table with the recorded rows converted
        and spliced in. A written row's index is its decision position, so a changed row
        replaces its own slot and new rows follow; slices are zero-copy."""
        if not self._changed:
            return self._written
        ids = sorted(self._changed, key=self._position.__getitem__)
        fresh = pa.Table.from_pylist([self.rows[i] for i in ids], schema=WEB_PHOTOS.schema)
        pieces, start, new_from = [], 0, len(ids)
        for j, photo_id in enumerate(ids):
            at = self._position[photo_id]
            if at >= self._written.num_rows:  # this and the rest are new decisions, already in order
                new_from = j
                break
            pieces += [self._written.slice(start, at - start), fresh.slice(j, 1)]
            start = at + 1
        pieces += [self._written.slice(start), fresh.slice(new_from)]
        return pa.concat_tables(pieces).combine_chunks()

    def commit(self, window: tuple[str, int, int], pages_done: int, done: bool, split: bool, api_calls: int) -> None:
        """Photos first, then progress: a crash between the two only repeats a page."""
        if self._changed:
            merged = self.photos_table()
            write_table(self.root.web_photos, merged, WEB_PHOTOS)
            self._written, self._changed = merged, set()
        self.progress[window] = {"keyword": window[0], "window_start": window[1], "window_end": window[2],
                                 "pages_done": pages_done, "done": done, "split": split, "api_calls": api_calls}  # fmt: skip
        write_table(self.root.crawl_progress, pd.DataFrame(list(self.progress.values())), CRAWL_PROGRESS)

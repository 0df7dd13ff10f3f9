"""The crawl: one Flickr search per keyword, the paper's four filters, polite downloads.

Production crawling only (the real Flickr API through ``flickrapi``, or any compatible
endpoint); the step that also serves the offline world's corpus is :mod:`tasks.steps.crawl`.

For each keyword of ``keywords.parquet`` (most frequent first) photos are searched
page by page (``per_page`` <= 500, never ``walk()``) until ``per_keyword`` photos are
kept. Flickr serves at most 4,000 results per query: when a keyword needs more, the
upload-date range is halved and each half searched again, newest first.

**Nights** (:mod:`tasks.crawling.state`): a crawl searches photos uploaded up to the clock
at its start. Run again (``mode="incremental"``, the default), it continues: each keyword
is searched only from its last crawl on (Flickr's ``min_upload_date``), at most
``new_per_keyword`` new photos are kept per keyword, and the filters hold over every
night's photos. ``mode="fresh"`` crawls from nothing into ``web.fresh/``, which replaces
``web/`` only once it has finished.

**Filters** (in this order, all as in the paper): licence (server-side and checked);
at least 2 English tags (:func:`tasks.text.web_tags.english_tags`); at most 5 kept photos per
owner across the whole crawl; not the same first 5 tags (as given) as a kept photo. A
photo already decided for another keyword is not decided again: its row records every
keyword that found it.

**Resumable**: ``web/photos.parquet`` (every decided photo) is the source of truth and
is rewritten atomically after each page, then ``web/crawl_progress.parquet`` (pages done
per keyword and date window; :mod:`tasks.crawling.state`). A crawl killed anywhere restarts from the last committed
page; decisions replayed from the table keep the owner and first-5-tag rules exact and
photo ids unique; images are content-addressed, so a re-download lands on the same file,
and files no row refers to are removed at the end.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import requests

from storage.atomic import sweep_partial_writes
from storage.layout import DataRoot, user_state_dir
from storage.locks import exclusive
from storage.tables import KEYWORDS, read_table
from tasks.crawling.config import CrawlConfig
from tasks.crawling.downloads import DownloadRefused, download_image
from tasks.crawling.flickr_client import OFFLINE_KEY, Credentials, FlickrClient
from tasks.crawling.rules import photo_verdict
from tasks.crawling.state import KEYWORD_DONE, CrawlState
from tasks.text.web_tags import english_lexicon, english_tag_count, english_tags

RESULT_CAP = 4000


class Crawler:
    def __init__(
        self,
        root: DataRoot,
        config: CrawlConfig,
        credentials: Credentials,
        log: Callable[[str], None] = print,
        before_call: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root, self.config, self.log, self.clock = root, config, log, clock
        self.client = FlickrClient(
            credentials,
            config.api_url,
            config.calls_per_hour,
            config.retry,
            log,
            # Flickr counts its 3,600 calls/hour per key: one budget for every data root of this user. The
            # offline demo key only ever reaches a local server: its budget stays with the data root.
            rate_state_dir=root.web_dir if credentials.key == OFFLINE_KEY else user_state_dir(),
            before_call=before_call,
        )
        self.state = CrawlState(root, config.first_tags)
        self.vocabulary = english_lexicon(root, config.english)
        self.session = requests.Session()
        self.extras = f"tags,owner_name,license,date_upload,{config.size}"
        self.malformed_without_id = 0
        self.unreachable: Counter[str] = Counter()

    # ---------------------------------------------------------------- decisions
    def _decide(self, photo: dict[str, Any], keyword: str, rank: int) -> dict[str, Any] | None:
        """A new row for an unseen photo (status kept or rejected:...); None if already seen.

        A record Flickr sent without the fields the rules need (no owner, a licence that is
        not a number) is rejected as ``rejected:malformed``, never fatal: the page is
        committed, so a resume does not meet the same record again.
        """
        cfg, state = self.config, self.state
        seen = state.rows.get(photo["id"])
        if seen is not None:
            if keyword not in seen["keywords"]:
                seen["keywords"].append(keyword)
                state.record(seen)
            return None
        tags = str(photo.get("tags") or "").split()
        english = english_tags(tags, self.vocabulary)
        owner = str(photo.get("owner") or "")
        license_id = _int_or_none(photo.get("license"))
        status = photo_verdict(
            tags, owner, license_id, english_tag_count(tags, self.vocabulary),
            cfg, state.owner_kept, state.first_kept,
        )  # fmt: skip
        row = {
            "photo_id": photo["id"], "owner": owner, "keyword": keyword, "keyword_rank": rank, "keywords": [keyword],
            "tags": tags, "english_tags": english, "title": str(photo.get("title") or ""), "license": -1 if license_id is None else license_id,
            "url": str(photo.get(self.config.size) or ""), "path": "", "sha256": "", "width": 0, "height": 0, "status": status,
            "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "night": state.night["night"],
        }  # fmt: skip
        if status == "kept":
            state.count_kept(row)  # tentatively: undone if its download fails (see _decide_page)
        return row

    def _download(self, row: dict[str, Any]) -> str | None:
        """Store the photo; the reason it could not be stored otherwise (the row is then ``failed_download``)."""
        try:
            got = download_image(self.session, row["url"], self.root, self.config.download)
        except DownloadRefused as refused:
            row["status"] = "failed_download"
            return f"photo {row['photo_id']}: {refused}"
        row.update(path=got.path, sha256=got.sha256, width=got.width, height=got.height)
        return None

    def _decide_page(
        self, photos: list[dict[str, Any]], keyword: str, rank: int, target: int
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Decide a page's photos and download the kept ones; returns the rows and the download problems.

        Only a photo actually stored takes a place in the keyword's quota, an owner's 5 slots
        and the first-5-tags keys: when downloads fail, those rows become ``failed_download``,
        their places are given back, and the photos of the page decided after them (perhaps
        rejected because of them, or never reached because the quota looked full) are decided
        again, until a round's downloads all succeed.
        """
        cfg, state = self.config, self.state
        final: dict[str, dict[str, Any]] = {}
        problems: list[str] = []
        identified = [{**photo, "id": str(photo["id"])} for photo in photos if str(photo.get("id") or "")]
        self.malformed_without_id += len(photos) - len(identified)  # nothing to record them under: counted in the summary
        order = {photo["id"]: i for i, photo in enumerate(identified)}
        while True:
            rows = []
            for photo in identified:
                if state.kept_for[keyword] >= target:
                    break
                if photo["id"] in final:
                    continue
                row = self._decide(photo, keyword, rank)
                if row is not None:
                    rows.append(row)
            kept = [r for r in rows if r["status"] == "kept"]
            with ThreadPoolExecutor(max(1, cfg.download_workers)) as pool:
                problems += [p for p in pool.map(self._download, kept) if p]
            failed = [r for r in kept if r["status"] == "failed_download"]
            for row in kept:  # stored photos keep their places; failed ones give theirs back
                if row["status"] == "failed_download":
                    state.uncount_kept(row)
                final[row["photo_id"]] = row
            if not failed:
                final.update((row["photo_id"], row) for row in rows)
                return sorted(final.values(), key=lambda r: order[r["photo_id"]]), problems
            # the rejections of this round may be due to the failed photos: they are decided again

    # ---------------------------------------------------------------- searching
    def _window(self, keyword: str, rank: int, lo: int, hi: int, target: int, depth: int = 0) -> bool:
        """Search one date window; True if the keyword reached its ``target`` (kept photos, all nights).

        The full range is paged up to the cap; a sub-window that still holds more than the
        cap is split after its first page instead of paging through known photos, down to
        one-second windows. Results beyond the cap of a one-second window cannot be reached
        by any query: they are counted (``unreachable``) and reported, never silently dropped.
        """
        cfg, state = self.config, self.state
        key = (keyword, lo, hi)
        saved = state.progress.get(key)
        page, capped = (int(saved["pages_done"]) if saved else 0) + 1, bool(saved and saved["split"])
        finished = bool(saved and saved["done"])
        splittable, total = hi > lo, 0
        while not finished and state.kept_for[keyword] < target:
            if (page - 1) * cfg.per_page >= RESULT_CAP:
                capped = True
                break
            params = {cfg.search_field: keyword, "per_page": cfg.per_page, "page": page, "sort": cfg.sort, "extras": self.extras,
                      "license": ",".join(map(str, cfg.licenses)), "min_upload_date": lo, "max_upload_date": hi}  # fmt: skip
            result = self.client.search(**params)
            total = result["total"]
            new_rows, problems = self._decide_page(result["photo"], keyword, rank, target)
            for row in new_rows:
                state.record(row)
            last = page >= result["pages"] or not result["photo"]
            # a sub-window still over the cap is split after its first page, not paged through
            capped = capped or (
                not last and splittable and (depth > 0 or page * cfg.per_page >= RESULT_CAP) and total > RESULT_CAP
            )
            finished = last or capped or state.kept_for[keyword] >= target
            state.commit(key, page, finished, capped, self.client.calls)
            stored = sum(r["status"] == "kept" for r in new_rows)
            failed = sum(r["status"] == "failed_download" for r in new_rows)
            self.log(f"crawl: '{keyword}' page {page}/{result['pages']} (window {lo}..{hi}): {stored} stored"
                     + (f", {failed} failed to download ({'; '.join(problems[:3])})" if failed else "")
                     + f"; {state.kept_for[keyword]}/{target} for the keyword")  # fmt: skip
            page += 1
        if capped and state.kept_for[keyword] < target and splittable:
            mid = (lo + hi) // 2
            return self._window(keyword, rank, mid + 1, hi, target, depth + 1) or self._window(
                keyword, rank, lo, mid, target, depth + 1
            )
        if capped and not splittable and total > RESULT_CAP and state.kept_for[keyword] < target:
            self.unreachable[keyword] += total - RESULT_CAP
            self.log(f"crawl: '{keyword}': {total - RESULT_CAP} results uploaded in the same second ({lo}) lie beyond Flickr's "
                     f"{RESULT_CAP}-result cap and cannot be reached by any query")  # fmt: skip
        return state.kept_for[keyword] >= target

    def run(self) -> dict[str, Any]:
        cfg, state = self.config, self.state
        started, calls_before = time.perf_counter(), self.client.calls
        keywords = read_table(self.root.keywords, KEYWORDS).sort_values("rank")
        if cfg.max_keywords is not None:
            keywords = keywords.head(cfg.max_keywords)
        night = state.open_night(cfg.mode, int(self.clock()))
        until = int(night["until"])
        self.log(f"crawl: night {night['night']}, photos uploaded up to {_utc(until)}")
        for keyword, rank in zip(keywords["keyword"], keywords["rank"]):
            if state.keyword_done(keyword, until):
                continue
            since = state.keyword_since(keyword)  # None: never crawled (a first night, or a keyword new to the list)
            target = state.kept_before_night(keyword) + (cfg.per_keyword if since is None else cfg.new_per_keyword)
            start = cfg.earliest_upload if since is None else since + 1
            if start <= until:
                self._window(keyword, int(rank), start, until, target)
            state.commit(
                (keyword, KEYWORD_DONE, until), 0, True, False, self.client.calls
            )  # the keyword is finished for the night
        night = state.finish_night(self.client.calls - calls_before)
        removed = remove_orphans(self.root, state)
        statuses = Counter(row["status"] for row in state.rows.values())
        kept = statuses["kept"]
        seconds = time.perf_counter() - started
        new = Counter(r["keyword"] for r in state.rows.values() if r["status"] == "kept" and r["night"] == night["night"])
        summary = {
            "kept": kept, "statuses": dict(statuses), "api_calls": self.client.calls - calls_before,
            "night": night["night"], "mode": night["mode"], "until": until, "new_kept": sum(new.values()), "new_by_keyword": dict(new),
            "seconds": seconds, "orphans_removed": removed,
            "found_by_several_keywords": sum(len(r["keywords"]) > 1 for r in state.rows.values()),
            "malformed_without_id": self.malformed_without_id, "unreachable": dict(self.unreachable),
        }  # fmt: skip
        self.log(
            f"crawl: night {night['night']} added {sum(new.values())} photos"
            + (f" ({', '.join(f'{k} {n}' for k, n in new.most_common(10))}{' ...' if len(new) > 10 else ''})" if new else "")
            + f"; {kept} photos kept in all; decisions by status {dict(statuses)}; {summary['api_calls']} API calls in {seconds:.1f}s"
            + (f"; {self.malformed_without_id} results without a photo id skipped" if self.malformed_without_id else "")
            + (f"; unreachable beyond the result cap: {dict(self.unreachable)}" if self.unreachable else "")
        )
        return summary


def _utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def remove_orphans(root: DataRoot, state: CrawlState) -> int:
    """Delete image files (and temp files) that no row refers to."""
    referenced = {row["sha256"] for row in state.rows.values() if row["sha256"]}
    removed = 0
    if root.web_images_dir.is_dir():
        for path in root.web_images_dir.rglob("*"):
            if path.is_file() and path.stem not in referenced:
                path.unlink()
                removed += 1
    return removed


def run_crawl(
    root: DataRoot,
    config: CrawlConfig = CrawlConfig(),
    credentials: Credentials | None = None,
    log: Callable[[str], None] = print,
    before_call: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Crawl (or continue crawling) into ``web/``; credentials default to the environment.

    One crawl per data root at a time (a second one is told who holds it); temporary files
    left by a killed crawl are swept before its state is read back.
    """
    credentials = credentials or Credentials.from_environment(config.api_url)
    with exclusive(root.crawl_lock, f"the crawl of {root.root}"):
        _finish_interrupted_swap(root, log)
        target = root.fresh_crawl() if config.mode == "fresh" else root
        swept = sweep_partial_writes(target.web_dir, recursive=True)
        if swept:
            log(f"crawl: removed {len(swept)} temporary file(s) left by an interrupted write")
        summary = Crawler(target, config, credentials, log, before_call, clock).run()
        if config.mode == "fresh":
            _replace_web(root, target, log)
        return summary


def _replace_web(root: DataRoot, fresh: DataRoot, log: Callable[[str], None]) -> None:
    """The finished fresh crawl takes the place of ``web/``; the old crawl goes only now."""
    if root.web_dir.exists():
        root.web_dir.rename(root.replaced_web_dir)
    fresh.web_dir.rename(root.web_dir)
    shutil.rmtree(root.replaced_web_dir, ignore_errors=True)
    log(f"crawl: the fresh crawl replaced {root.web_dir}")


def _finish_interrupted_swap(root: DataRoot, log: Callable[[str], None]) -> None:
    """A crash inside :func:`_replace_web`: put whichever crawl is complete back in ``web/``."""
    if not root.replaced_web_dir.exists():
        return
    if not root.web_dir.exists():
        root.replaced_web_dir.rename(root.web_dir)  # the fresh crawl was not moved in: it resumes from web.fresh/
        log(f"crawl: restored {root.web_dir} after an interrupted replacement")
    else:
        shutil.rmtree(root.replaced_web_dir, ignore_errors=True)

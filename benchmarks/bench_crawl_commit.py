"""Crawl commit per page: incremental (CrawlState.commit) vs rebuilding the whole table.

A crawl commits ``web/photos.parquet`` after every result page. Starting from ``--rows``
decided photos, each simulated page decides ``--per-page`` new photos and finds
``--found-again`` older ones again for another keyword. The baseline is the former commit
(a DataFrame of every row, written whole), timed on the same rows in the same run; the two
files must be byte-identical (asserted). Prints median seconds per page and the ratio.

    python benchmarks/bench_crawl_commit.py [--rows 200000] [--pages 5] [--per-page 250]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from storage.layout import DataRoot
from storage.tables import WEB_PHOTOS, write_table
from tasks.crawling.state import CrawlState


def photo(i: int, keyword: str) -> dict[str, Any]:
    return {
        "photo_id": str(5_000_000_000 + i), "owner": f"{i % 40_000}@N0{i % 8}", "keyword": keyword, "keyword_rank": i % 1000,
        "keywords": [keyword], "tags": [keyword, "beach", "sand", "sea", "sunset", "canon", f"t{i % 997}"],
        "english_tags": [keyword, "beach", "sand", "sea", "sunset"], "title": f"at the beach {i}", "license": 4,
        "url": f"https://live.staticflickr.com/65535/{5_000_000_000 + i}_abcdef_z.jpg", "path": f"images/{i % 256:02x}/{i:064x}.jpg",
        "sha256": f"{i:064x}", "width": 640, "height": 480, "status": "kept" if i % 3 else "rejected:owner_limit",
        "fetched_at": "2026-11-23T00:00:00+00:00",
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="photos decided before the timed pages")
    parser.add_argument("--pages", type=int, default=5)
    parser.add_argument("--per-page", type=int, default=250)
    parser.add_argument("--found-again", type=int, default=10, help="older photos another keyword finds per page")
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as folder:
        root = DataRoot(Path(folder))
        write_table(
            root.web_photos,
            pd.DataFrame([photo(i, f"kw{i // 200}") for i in range(args.rows)], columns=WEB_PHOTOS.columns),
            WEB_PHOTOS,
        )
        state = CrawlState(root)
        incremental, rebuild = [], []
        for page in range(args.pages):
            keyword, first = f"page{page}", args.rows + page * args.per_page
            for i in range(first, first + args.per_page):
                state.record(photo(i, keyword))
            for old in rng.sample(range(first), args.found_again):
                row = state.rows[str(5_000_000_000 + old)]
                row["keywords"].append(keyword)
                state.record(row)
            start = time.perf_counter()
            state.commit((keyword, -1, -1), 1, True, False, page + 1)
            incremental.append(time.perf_counter() - start)
            start = time.perf_counter()
            baseline = write_table(
                Path(folder) / "rebuilt.parquet", pd.DataFrame(list(state.rows.values()), columns=WEB_PHOTOS.columns), WEB_PHOTOS
            )
            rebuild.append(time.perf_counter() - start)
            assert baseline.read_bytes() == root.web_photos.read_bytes(), "incremental commit wrote a different file"
    fast, slow = statistics.median(incremental), statistics.median(rebuild)
    total = args.rows + args.pages * args.per_page
    print(f"{total:,} decided photos, {args.per_page} new + {args.found_again} found again per page, {args.pages} pages")
    print(f"full rebuild (baseline)  {slow * 1000:8.0f} ms/page")
    print(f"incremental commit       {fast * 1000:8.0f} ms/page   {slow / fast:.1f}x faster, byte-identical file")


if __name__ == "__main__":
    main()

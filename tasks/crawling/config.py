"""The crawler's settings, apart from the crawler, so the configuration can read their defaults.

``CrawlConfig`` is what :class:`tasks.crawling.crawler.Crawler` runs with; the pipeline's ``crawl``
section (:class:`tasks.pipeline_config.CrawlSettings`) takes its user-facing defaults from
here and ``tasks.steps.crawl.crawl_step`` builds one from the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from storage.errors import InputError
from tasks.crawling.downloads import DownloadPolicy
from tasks.crawling.flickr_client import FLICKR_CALLS_PER_HOUR, FLICKR_REST_URL, RetryPolicy

CrawlMode = Literal["incremental", "fresh"]
EnglishRule = Literal["wordfreq", "captions"]
CC_LICENSES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 9)  # the Creative Commons licences, CC0 included
FLICKR_LAUNCH = 1072915200  # 2004-01-01


@dataclass(frozen=True)
class CrawlConfig:
    api_url: str = FLICKR_REST_URL
    per_keyword: int = 200
    new_per_keyword: int = 50  # photos per keyword per later night
    mode: CrawlMode = "incremental"
    per_page: int = 250
    max_keywords: int | None = None
    search_field: str = "text"
    sort: str = "relevance"
    licenses: tuple[int, ...] = CC_LICENSES
    min_english_tags: int = 2
    english: EnglishRule = "wordfreq"  # what makes a tag English: wordfreq's common words, or "captions" (the clean vocabulary)
    max_per_owner: int = 5
    first_tags: int = 5
    size: str = "url_m"
    calls_per_hour: int = FLICKR_CALLS_PER_HOUR
    download_workers: int = 4
    earliest_upload: int = FLICKR_LAUNCH
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    download: DownloadPolicy = field(default_factory=DownloadPolicy)

    def __post_init__(self) -> None:
        if not 1 <= self.per_page <= 500:
            raise InputError(f"crawl.per_page must be in 1..500, got {self.per_page}")
        if min(self.per_keyword, self.new_per_keyword, self.max_per_owner) < 1 or self.min_english_tags < 0:
            raise InputError(
                "crawl.per_keyword, crawl.new_per_keyword and crawl.max_per_owner must be >= 1, crawl.min_english_tags >= 0"
            )
        if self.mode not in ("incremental", "fresh"):
            raise InputError(f"crawl.mode must be 'incremental' or 'fresh', got {self.mode!r}")
        if self.search_field not in ("text", "tags"):
            raise InputError(f"crawl.search_field must be 'text' or 'tags', got {self.search_field!r}")

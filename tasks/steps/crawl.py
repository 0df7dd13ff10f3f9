"""The crawl step: Flickr (Secret blocks, then the environment), or the offline world's corpus
served on 127.0.0.1 for the duration of the crawl, on the corpus's own clock.

Composition only: the production crawler (:mod:`tasks.crawling.crawler`) never imports the offline
stand-in; :mod:`tasks.steps.world`, the one bridge to :mod:`webvse_world`, serves its corpus.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect.blocks.system import Secret
from prefect.concurrency.sync import rate_limit

from storage.errors import InputError
from storage.layout import DataRoot
from tasks.crawling.config import CrawlConfig
from tasks.crawling.crawler import run_crawl
from tasks.crawling.downloads import DownloadPolicy
from tasks.crawling.flickr_client import FLICKR_REST_URL, Credentials, RetryPolicy
from tasks.orchestration import pipeline_task, root_of, step_logger
from tasks.pipeline_config import CrawlSettings
from tasks.steps.world import corpus_clock, crawl_local


def crawl_night(corpus: str | None) -> str:
    """The date of the night a crawl would begin now: by the local corpus's clock, else the real one."""
    now = corpus_clock(corpus) if corpus else None
    return datetime.fromtimestamp(time.time() if now is None else now, timezone.utc).strftime("%Y-%m-%d")


def _secret(block: str) -> str | None:
    """A Prefect Secret block's value, or None when no such block exists."""
    try:
        secret: Secret = Secret.load(block)  # type: ignore[assignment]  # sync in a sync context (Prefect's dual API)
        return str(secret.get())
    except ValueError:  # "Unable to find block document named ..."
        return None


def flickr_credentials(settings: CrawlSettings) -> Credentials:
    """Secret blocks first (the deployment way), then $FLICKR_API_KEY / $FLICKR_API_SECRET."""
    if settings.api_url is None:
        raise InputError("crawl.api_url is empty: the local corpus is crawled by crawl_local, not with credentials")
    key = _secret(settings.key_block)
    if key:
        return Credentials(key, _secret(settings.secret_block) or "unused")
    return Credentials.from_environment(settings.api_url)


def _crawl_reads(inputs: dict[str, Any]) -> list[Path]:
    corpus = inputs.get("corpus")
    return [root_of(inputs).keywords] + ([Path(corpus) / "photos.parquet"] if corpus else [])


@pipeline_task(
    "crawl",
    ("tasks.steps.crawl", "tasks.steps.world", "tasks.crawling", "tasks.text.web_tags"),
    reads=_crawl_reads,
    writes=lambda i: [root_of(i).web_photos],
)
def crawl_step(root: str, settings: CrawlSettings, corpus: str | None, night: str | None = None) -> dict[str, Any]:
    """Crawl Flickr (or the local corpus, served on 127.0.0.1 meanwhile); returns the summary.

    ``night`` (a date) is part of the cache key only: the nightly cycle crawls once per night,
    while any other run keeps the cached crawl until its settings or keywords change.
    """
    data_root, log = DataRoot.resolve(root), step_logger()
    options = dict(
        per_keyword=settings.per_keyword, new_per_keyword=settings.new_per_keyword, mode=settings.mode, per_page=settings.per_page, max_keywords=settings.max_keywords,
        calls_per_hour=settings.calls_per_hour, download_workers=settings.download_workers, english=settings.english,
        retry=RetryPolicy(attempts=settings.request_attempts), download=DownloadPolicy(attempts=settings.request_attempts),
    )  # fmt: skip
    if corpus is not None:
        return crawl_local(data_root, corpus, log, **options)
    limit = settings.rate_limit
    before_call = (lambda: rate_limit(limit)) if limit else None
    config = CrawlConfig(api_url=settings.api_url or FLICKR_REST_URL, **options)  # type: ignore[arg-type]
    return run_crawl(data_root, config, flickr_credentials(settings), log, before_call)

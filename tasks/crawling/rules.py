"""The paper's crawl filters as one pure decision, apart from the I/O around them.

Kept apart so the rules can be read in one place and tested (and mutation-tested, see
``scripts/mutation.py``) without a server: the crawler gathers the facts of a photo and
the crawl's state so far, this module says what becomes of it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol


class FilterSettings(Protocol):
    """The filter settings of a crawl (``tasks.crawling.crawler.CrawlConfig`` has them)."""

    @property
    def licenses(self) -> tuple[int, ...]: ...
    @property
    def min_english_tags(self) -> int: ...
    @property
    def max_per_owner(self) -> int: ...
    @property
    def first_tags(self) -> int: ...


def first_tags_key(tags: Sequence[str], count: int) -> tuple[str, ...]:
    """The duplicate key: the photo's first ``count`` tags, as the uploader ordered them."""
    return tuple(tags[:count])


def photo_verdict(
    tags: Sequence[str],
    owner: str,
    license_id: int | None,
    english_count: int,
    settings: FilterSettings,
    owner_kept: Mapping[str, int],
    first_kept: Collection[tuple[str, ...]],
) -> str:
    """``kept`` or ``rejected:<reason>``, the first failed filter in the paper's order.

    A record without the fields the rules need (no owner, no numeric licence) is
    ``rejected:malformed``; ``owner_kept`` counts the photos already kept per owner over
    the whole crawl (every keyword, every night) and ``first_kept`` holds the first-tag keys
    of the kept photos.
    """
    if not owner or license_id is None:
        return "rejected:malformed"
    if license_id not in settings.licenses:
        return "rejected:license"
    if english_count < settings.min_english_tags:
        return "rejected:few_english_tags"
    if owner_kept.get(owner, 0) >= settings.max_per_owner:
        return "rejected:owner_limit"
    if first_tags_key(tags, settings.first_tags) in first_kept:
        return "rejected:same_first_tags"
    return "kept"

"""MIRFLICKR-25000 (real Flickr photos with their real user tags) as a corpus the local
Flickr-compatible server serves, so the crawl runs on it exactly as against Flickr.

What the source lacks, and what the server therefore reports (say it in any result built
on it; never pretend a rule was exercised when it was not):

* **owners**: MIRFLICKR has no owner ids. Each photo is reported as its own owner
  (``mirflickr-<id>``), so the paper's 5-per-owner rule can never reject one: it is not
  exercised on this corpus.
* **upload dates**: none in the source. Each photo gets a fixed date in 2004-2008 (when
  MIRFLICKR was collected) drawn from the sha1 of its id. Only the crawl's date windows
  (Flickr's 4,000-results cap) read it.
* **licences**: MIRFLICKR holds Creative Commons photos only, without the licence per photo
  in this copy: each is reported as licence 4 (CC BY), so the licence rule keeps them all.
* **titles**: none; text search therefore matches tags only.

The ``concepts`` column (MIRFLICKR's human annotations) goes to the corpus's ground-truth
``depicts`` column, which the server never serves. A row whose image file is missing or
whose tag list is empty is skipped and counted; a header without the needed columns or a
line that is not UTF-8 is an error naming the file and line.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from storage.errors import InputError, MissingInputError
from storage.tables import FLICKR_CORPUS, write_table
from storage.textfile import read_utf8
from webvse_world.web import PHOTOS_FILE

MIRFLICKR_LICENSE = 4
DATES_FROM, DATES_SPAN = 1072915200, 5 * 365 * 86400  # 2004-01-01 + 5 years
SIZE = 128  # the shared copy's photos are 128 x 128


@dataclass(frozen=True)
class MirflickrImport:
    photos: int
    missing_images: int
    without_tags: int
    table: Path


def owner_of(mirflickr_id: str) -> str:
    """One owner per photo: MIRFLICKR has no owner ids (the owner rule cannot bind)."""
    return f"mirflickr-{mirflickr_id}"


def _date_of(mirflickr_id: str) -> int:
    digest = hashlib.sha1(mirflickr_id.encode()).digest()
    return DATES_FROM + int.from_bytes(digest[:8], "big") % DATES_SPAN


def import_mirflickr(source_dir: str | Path, corpus_dir: str | Path) -> MirflickrImport:
    """Write ``<corpus_dir>/photos.parquet`` for the photos of ``<source_dir>/tags.csv``.

    Image files stay where they are: the table names them by absolute path (the data is
    read from ``../shared``, never copied).
    """
    source = Path(source_dir).resolve()
    tags_csv = source / "tags.csv"
    if not tags_csv.is_file():
        raise MissingInputError(f"{tags_csv} does not exist (the MIRFLICKR folder holds tags.csv and images/)")
    reader = csv.DictReader(io.StringIO(read_utf8(tags_csv), newline=""))
    needed = {"image", "mirflickr_id", "tags"}
    if not needed <= set(reader.fieldnames or ()):
        raise InputError(f"{tags_csv} must have the columns {sorted(needed)} (and optionally concepts)")
    photos, missing, without_tags = [], 0, 0
    for line, row in enumerate(reader, start=2):
        photo_id = (row["mirflickr_id"] or "").strip()
        if not photo_id.isdigit():
            raise InputError(f"{tags_csv}: line {line} has mirflickr_id {photo_id!r}; expected a number")
        image = source / "images" / (row["image"] or "").strip()
        tags = (row["tags"] or "").split()
        if not tags:
            without_tags += 1
            continue
        if not image.is_file():
            missing += 1
            continue
        photos.append({
            "photo_id": photo_id, "owner": owner_of(photo_id), "ownername": "", "title": "", "tags": tags,
            "license": MIRFLICKR_LICENSE, "date_upload": _date_of(photo_id), "server": str(1000 + int(photo_id) % 9000),
            "secret": hashlib.sha256(f"mirflickr:{photo_id}".encode()).hexdigest()[:10], "width": SIZE, "height": SIZE,
            "file": str(image), "depicts": (row.get("concepts") or "").strip(), "duplicate_of": "",
        })  # fmt: skip
    if not photos:
        raise InputError(f"{tags_csv}: no photo has both an image file and a tag")
    table = write_table(Path(corpus_dir) / PHOTOS_FILE, pd.DataFrame(photos), FLICKR_CORPUS)
    return MirflickrImport(len(photos), missing, without_tags, table)

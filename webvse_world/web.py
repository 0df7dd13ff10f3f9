"""The generated web corpus: photos with tags as noisy as real Flickr tags.

Every object concept is covered equally (``photos_per_object`` each), so rare
concepts of the clean set are well covered here. Tags start from the scene's true
words and are then degraded the way Flickr tags are: words dropped, synonyms and
plurals, misspellings, joined CamelCase words, non-English words, camera and brand
tags, machine tags, generic filler. On top: owners who flood one keyword with dozens
of near-identical photos, and photos uploaded twice with their tags in another order.
Written as ``photos.parquet`` (storage.tables.FLICKR_CORPUS) + ``images/<id>.jpg``; the
``depicts`` column is ground truth for tests and analysis and is never served.

**The world has time.** ``clock.json`` holds the corpus's simulated "now": the server
shows only photos uploaded by then. Beyond it lie ``nights`` days of future uploads (by
repeat and new owners, some of them re-uploads of older photos with the same tags), which
appear one night at a time as :func:`advance_clock` moves "now" on: what a nightly
incremental crawl meets on the real Flickr.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from storage.atomic import atomic_write_text
from storage.errors import InputError
from storage.tables import FLICKR_CORPUS, write_table
from webvse_world.concepts import BACKGROUNDS, COLOURS, OBJECTS, SIZES
from webvse_world.scenes import IMAGE_SIZE, Scene, pluralise, render, sample_scene, write_jpeg

PHOTOS_FILE = "photos.parquet"
CLOCK_FILE = "clock.json"
DAY = 86_400
CAMERA_TAGS = ("canon", "nikon", "sony", "iphone", "eos5dmarkii", "dslr", "50mm", "nikond750", "fujifilm", "gopro")
FILLER_TAGS = ("photo", "picture", "nature", "2014", "vacation", "summer", "travel", "instagood", "art", "love", "beautiful")
FOREIGN_TAGS = (
    "perro",
    "gato",
    "hund",
    "katze",
    "chien",
    "voiture",
    "playa",
    "schnee",
    "猫",
    "犬",
    "собака",
    "海",
    "fiore",
    "baum",
)
MACHINE_TAGS = ("geo:lat=48.85", "camera:make=canon", "upload:by=flickrmobile", "exif:iso=200")
# Flickr's licence ids (flickr.photos.licenses.getInfo); weights favour Creative Commons
LICENSES: dict[int, str] = {
    0: "All Rights Reserved", 1: "Attribution-NonCommercial-ShareAlike License", 2: "Attribution-NonCommercial License",
    3: "Attribution-NonCommercial-NoDerivs License", 4: "Attribution License", 5: "Attribution-ShareAlike License",
    6: "Attribution-NoDerivs License", 7: "No known copyright restrictions", 8: "United States Government Work",
    9: "Public Domain Dedication (CC0)", 10: "Public Domain Mark",
}  # fmt: skip
LICENSE_WEIGHTS = np.array([20, 12, 14, 10, 14, 10, 6, 4, 1, 5, 4], dtype=float)
FIRST_UPLOAD, LAST_UPLOAD = 1199145600, 1514764800  # 2008-01-01 .. 2018-01-01


@dataclass(frozen=True)
class WebSizes:
    photos_per_object: int = 120
    owners: int = 400
    flooding_owners: int = 6
    flood_size: int = 40
    reupload_rate: float = 0.03
    nights: int = 3  # days of future uploads beyond the clock
    uploads_per_night: int = 100
    night_reupload_rate: float = 0.1  # of a night's uploads: an older photo again, same tags in the same order


def _misspell(word: str, rng: np.random.Generator) -> str:
    if len(word) < 4:
        return word + word[-1]
    i = int(rng.integers(1, len(word) - 2))
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def noisy_tags(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Tags an uploader might give this scene."""
    true: list[str] = []
    for group in scene.groups:
        noun = group.obj.name if rng.random() < 0.6 else str(rng.choice(group.obj.synonyms))  # mostly the plain word
        true.append(pluralise(noun) if group.count > 1 and rng.random() < 0.4 else noun)
        if rng.random() < 0.6:
            true.append(str(rng.choice(COLOURS[group.colour][0])))
        if rng.random() < 0.2:
            true.append(str(rng.choice(SIZES[group.size][0])))
    true.append(str(rng.choice(BACKGROUNDS[scene.background])).replace(" ", ""))
    tags = [t for i, t in enumerate(true) if i == 0 or rng.random() > 0.2]  # words go missing
    if rng.random() < 0.1:
        tags[0] = _misspell(tags[0], rng)
    if rng.random() < 0.15 and len(tags) >= 2:
        tags.append(tags[-2].capitalize() + tags[-1].capitalize())  # "RedDog", "BeachLife"
    for pool, p in ((CAMERA_TAGS, 0.35), (FILLER_TAGS, 0.5), (FOREIGN_TAGS, 0.25), (MACHINE_TAGS, 0.1)):
        if rng.random() < p:
            tags.append(str(rng.choice(pool)))
    order = rng.permutation(len(tags))
    return [tags[i] for i in order]


def _title(scene: Scene, rng: np.random.Generator, n: int) -> str:
    options = (f"IMG_{n:04d}", f"My {scene.groups[0].obj.name}", "DSC" + str(10000 + n), "untitled", f"{scene.background} day")
    return str(rng.choice(options))


def _secret(seed: int, photo_id: str) -> str:
    return hashlib.sha256(f"{seed}:{photo_id}".encode()).hexdigest()[:10]


def _photo(args: tuple[int, int, str, str, int, int, str]) -> dict[str, object]:
    """One photo: render, tag, write; a pure function of (seed, n) and its owner/keyword."""
    seed, n, obj_name, owner, base_seed, flood, folder = args
    rng = np.random.default_rng([seed, n])
    obj = next(o for o in OBJECTS if o.name == obj_name)
    scene_rng = np.random.default_rng([seed, 10**6 + base_seed]) if flood else rng
    scene = sample_scene(scene_rng, np.full(len(OBJECTS), 1 / len(OBJECTS)), first=obj, second_p=0.4)
    photo_id = str(5_000_000_000 + n * 7919)
    file = f"images/{photo_id}.jpg"
    write_jpeg(Path(folder) / file, render(scene, rng))  # floods: same scene, new noise
    return {
        "photo_id": photo_id, "owner": owner, "ownername": f"user{owner.split('@')[0][-4:]}", "title": _title(scene, rng, n),
        "tags": noisy_tags(scene, rng), "license": int(rng.choice(len(LICENSES), p=LICENSE_WEIGHTS / LICENSE_WEIGHTS.sum())),
        "date_upload": int(rng.integers(FIRST_UPLOAD, LAST_UPLOAD)), "server": str(1000 + n % 9000),
        "secret": _secret(seed, photo_id), "width": IMAGE_SIZE, "height": IMAGE_SIZE, "file": file,
        "depicts": obj.name, "duplicate_of": "",
    }  # fmt: skip


def generate_web_corpus(folder: str | Path, sizes: WebSizes = WebSizes(), seed: int = 0, workers: int = 2) -> Path:
    """Write the corpus and its clock; returns the path of ``photos.parquet``. Deterministic from ``seed``."""
    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7])
    owners = [f"{10_000_000 + i * 37}@N0{i % 8}" for i in range(sizes.owners)]
    activity = 1.0 / np.arange(1, sizes.owners + 1) ** 0.8
    jobs: list[tuple[int, int, str, str, int, int, str]] = []
    for obj in OBJECTS:
        for _ in range(sizes.photos_per_object):
            owner = owners[int(rng.choice(sizes.owners, p=activity / activity.sum()))]
            jobs.append((seed, len(jobs), obj.name, owner, 0, 0, str(root)))
    for f in range(sizes.flooding_owners):  # dozens of near-identical photos of one subject
        obj = OBJECTS[int(rng.integers(len(OBJECTS)))]
        owner = f"{90_000_000 + f}@N01"
        jobs.extend((seed, len(jobs), obj.name, owner, f + 1, 1, str(root)) for _ in range(sizes.flood_size))
    base = len(jobs)
    night_of: dict[int, int] = {}  # job index -> the night (1..) its photo is uploaded
    for night in range(1, sizes.nights + 1):
        for _ in range(sizes.uploads_per_night):
            repeat = rng.random() < 0.5  # half from the known uploaders, half from people new to the crawl
            owner = (
                owners[int(rng.choice(sizes.owners, p=activity / activity.sum()))] if repeat else f"{80_000_000 + len(jobs)}@N02"
            )
            night_of[len(jobs)] = night
            jobs.append((seed, len(jobs), OBJECTS[int(rng.integers(len(OBJECTS)))].name, owner, 0, 0, str(root)))
    if workers > 1 and len(jobs) > 200:
        with ProcessPoolExecutor(workers) as pool:
            photos = list(pool.map(_photo, jobs, chunksize=64))
    else:
        photos = [_photo(job) for job in jobs]
    past, future = photos[:base], photos[base:]
    for original in [past[i] for i in rng.choice(len(past), int(sizes.reupload_rate * len(past)), replace=False)]:
        copy = _reupload(original, len(photos), seed)  # the same file uploaded again, tags in another order
        copy["tags"] = [original["tags"][i] for i in rng.permutation(len(original["tags"]))]
        copy["date_upload"] = int(original["date_upload"]) + int(rng.integers(60, DAY * 30))
        photos.append(copy)
    now = max(int(p["date_upload"]) for p in photos)  # type: ignore[call-overload]
    for i, photo in enumerate(future):
        photo["date_upload"] = now + (night_of[base + i] - 1) * DAY + int(rng.integers(1, DAY))
        if rng.random() < sizes.night_reupload_rate:  # an older photo uploaded again that night, tags as they were
            copy = _reupload(past[int(rng.integers(len(past)))], len(photos), seed)
            copy["date_upload"] = photo["date_upload"]
            photos.append(copy)
    write_clock(root, now)
    return write_table(root / PHOTOS_FILE, pd.DataFrame(photos), FLICKR_CORPUS)


def _reupload(original: dict[str, object], number: int, seed: int) -> dict[str, object]:
    copy = dict(original)
    copy["photo_id"] = str(9_000_000_000 + number)
    copy["secret"] = _secret(seed, str(copy["photo_id"]))
    copy["duplicate_of"] = original["photo_id"]
    return copy


def write_clock(folder: str | Path, now: int) -> None:
    """Set the corpus's simulated "now" (seconds since the epoch)."""
    atomic_write_text(Path(folder) / CLOCK_FILE, json.dumps({"now": int(now)}))


def read_clock(folder: str | Path) -> int | None:
    """The corpus's simulated "now", or None for a corpus without time (every photo visible)."""
    path = Path(folder) / CLOCK_FILE
    if not path.is_file():
        return None
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["now"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f'{path} is not a corpus clock ({{"now": <seconds since the epoch>}}): {exc}') from None


def advance_clock(folder: str | Path, seconds: int = DAY) -> int:
    """Move the corpus's "now" on (a night by default), so that the next uploads appear; returns it."""
    now = read_clock(folder)
    if now is None:
        raise InputError(f"{folder} has no {CLOCK_FILE}: it is a corpus without time (every photo is already visible)")
    write_clock(folder, now + seconds)
    return now + seconds

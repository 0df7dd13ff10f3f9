"""The crawler against the local Flickr server: filters, cap and windows, faults, SIGKILL, secrets."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
from PIL import Image

from storage.layout import DataRoot
from storage.tables import CLEAN_CAPTIONS, CRAWL_PROGRESS, FLICKR_CORPUS, KEYWORDS, WEB_PHOTOS, read_table, write_table
from tasks.crawling.config import CrawlConfig
from tasks.crawling.crawler import run_crawl
from tasks.crawling.downloads import DownloadPolicy, DownloadRefused, download_image
from tasks.crawling.flickr_client import BadApiKey, Credentials, RetryPolicy
from webvse_world.flickr_server import DEFAULT_KEY, Faults, FlickrServer

ROOT = Path(__file__).resolve().parents[1]
VOCAB_CAPTION = "a dog and a cat with a red ball on the beach near a boat tree house horse bird car"
FAST = dict(calls_per_hour=10**6, retry=RetryPolicy(base_delay=0.001, max_delay=0.01), download=DownloadPolicy(backoff=0.001))


def _jpeg(n: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (n % 256, (n // 256) % 256, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


def make_corpus(folder: Path, photos: list[dict[str, object]]) -> Path:
    """A corpus with the given (id, owner, tags, license) photos and a distinct small JPEG each."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for n, p in enumerate(photos):
        pid = str(p.get("id", 7_000_000 + n))
        file = str(p.get("file", f"images/{pid}.jpg"))  # a given file (broken, missing, redirect:URL) is the test's own
        if "file" not in p:
            (folder / file).write_bytes(_jpeg(n))
        rows.append({"photo_id": pid, "owner": p.get("owner", f"{n}@N01"), "ownername": "", "title": "",
                     "tags": p["tags"], "license": p.get("license", 4), "date_upload": p.get("date", 1_400_000_000 + n),
                     "server": "1", "secret": "abc", "width": 16, "height": 12, "file": file,
                     "depicts": "", "duplicate_of": ""})  # fmt: skip
    write_table(folder / "photos.parquet", pd.DataFrame(rows), FLICKR_CORPUS)
    return folder


def make_root(folder: Path, keywords: list[str]) -> DataRoot:
    root = DataRoot.resolve(folder)
    write_table(root.keywords, pd.DataFrame({"keyword": keywords, "count": list(range(len(keywords), 0, -1)),
                                             "rank": list(range(1, len(keywords) + 1)), "variants": [[k] for k in keywords]}), KEYWORDS)  # fmt: skip
    write_table(root.clean_captions, pd.DataFrame([{"caption_id": "c", "image_id": "i", "split": "train", "text": VOCAB_CAPTION,
                                                    "tokens": VOCAB_CAPTION.split(), "dummy_tags": []}]), CLEAN_CAPTIONS)  # fmt: skip
    return root


def crawled(root: DataRoot) -> pd.DataFrame:
    return read_table(root.web_photos, WEB_PHOTOS).set_index("photo_id")


def test_the_four_filters(tmp_path: Path) -> None:
    photos = [{"id": f"flood{i}", "owner": "flooder@N01", "tags": ["dog", "red", f"x{i}"]} for i in range(8)]
    photos += [
        {"id": "first", "tags": ["dog", "ball", "beach", "red", "boat", "zz1"]},
        {"id": "same5", "tags": ["dog", "ball", "beach", "red", "boat", "zz2"]},  # same first 5, in order
        {"id": "reordered", "tags": ["ball", "dog", "beach", "red", "boat", "zz1"]},  # same tags, other order
        {"id": "foreign", "tags": ["dog", "perro", "犬", "canon", "geo:lat=1"]},  # one English tag
        {"id": "both", "tags": ["dog", "cat", "tree"]},  # found by 'dog' and by 'cat'
        {"id": "closed", "tags": ["dog", "cat", "house"], "license": 0},  # all rights reserved
    ]
    corpus = make_corpus(tmp_path / "corpus", photos)
    root = make_root(tmp_path / "root", ["dog", "cat"])
    with FlickrServer(corpus) as server:
        summary = run_crawl(root, CrawlConfig(api_url=server.rest_url, **FAST), Credentials(DEFAULT_KEY, "s"), log=lambda m: None)
    table = crawled(root)
    status = table["status"].to_dict()
    assert sum(status[f"flood{i}"] == "kept" for i in range(8)) == 5
    assert sum(status[f"flood{i}"] == "rejected:owner_limit" for i in range(8)) == 3
    assert sorted([status["first"], status["same5"]]) == ["kept", "rejected:same_first_tags"]  # whichever came first wins
    assert status["reordered"] == "kept"  # the paper's rule compares the first 5 tags *in order*
    assert status["foreign"] == "rejected:few_english_tags"
    assert table.loc["foreign", "english_tags"].tolist() == ["dog"]
    assert status["both"] == "kept" and table.loc["both", "keywords"].tolist() == ["dog", "cat"]
    assert "closed" not in table.index  # the licence filter is applied by the search itself
    assert table.index.is_unique and summary["statuses"]["kept"] == (table["status"] == "kept").sum()
    for _, row in table[table["status"] == "kept"].iterrows():
        assert (root.root / row["path"]).is_file() and row["sha256"] in row["path"] and (row["width"], row["height"]) == (16, 12)


def test_the_4000_cap_is_passed_with_date_windows(tmp_path: Path) -> None:
    photos = [{"owner": f"{n}@N02", "tags": ["dog", "red", f"n{n}"], "date": 1_300_000_000 + 600 * n} for n in range(4300)]
    corpus = make_corpus(tmp_path / "corpus", photos)
    root = make_root(tmp_path / "root", ["dog"])
    with FlickrServer(corpus) as server:
        summary = run_crawl(root, CrawlConfig(api_url=server.rest_url, per_keyword=4250, per_page=500, download_workers=8, **FAST),
                            Credentials(DEFAULT_KEY, "s"), log=lambda m: None)  # fmt: skip
    table = crawled(root)
    assert (table["status"] == "kept").sum() == 4250 and table.index.is_unique
    progress = read_table(root.crawl_progress, CRAWL_PROGRESS)
    assert (progress["window_start"] > 0).sum() > 1  # more than one date window was searched
    assert summary["api_calls"] <= 60, summary["api_calls"]  # windows are split, not paged through


def _world_root(tmp_path: Path) -> tuple[DataRoot, Path]:
    from tasks.data.clean_data import ingest_karpathy
    from webvse_world.clean import CleanSizes, generate_clean_dataset
    from webvse_world.concepts import OBJECTS
    from webvse_world.web import WebSizes, generate_web_corpus

    root = make_root(tmp_path / "root", [o.name for o in OBJECTS[:12]])
    ingest_karpathy(root, generate_clean_dataset(tmp_path / "clean", CleanSizes(train=80, val=0, test=0), seed=4))
    corpus = tmp_path / "corpus"
    generate_web_corpus(corpus, WebSizes(photos_per_object=20, owners=80, flooding_owners=1, flood_size=20), seed=4)
    return root, corpus


def _kept(root: DataRoot) -> dict[str, str]:
    table = crawled(root)
    return table.loc[table["status"] == "kept", "sha256"].to_dict()


def test_faults_do_not_change_the_kept_set(tmp_path: Path) -> None:
    clean_root, corpus = _world_root(tmp_path / "a")
    faulty_root = make_root(tmp_path / "b", read_table(clean_root.keywords, KEYWORDS)["keyword"].tolist())
    write_table(faulty_root.clean_captions, read_table(clean_root.clean_captions, CLEAN_CAPTIONS), CLEAN_CAPTIONS)
    config = dict(per_keyword=8, per_page=10, **FAST)
    with FlickrServer(corpus) as server:
        run_crawl(clean_root, CrawlConfig(api_url=server.rest_url, **config), Credentials(DEFAULT_KEY, "s"), log=lambda m: None)
    faults = Faults(
        error_rate=0.08, throttle_rate=0.04, retry_after=0, truncated_json_rate=0.04, truncated_image_rate=0.04, seed=9
    )
    with FlickrServer(corpus, faults=faults) as server:
        summary = run_crawl(
            faulty_root, CrawlConfig(api_url=server.rest_url, **config), Credentials(DEFAULT_KEY, "s"), log=lambda m: None
        )
        injected = sum(server.stats[k] for k in ("error", "throttle", "truncate"))
    assert injected > 10  # the faults really happened ...
    assert _kept(faulty_root) == _kept(clean_root) and len(_kept(clean_root)) > 50  # ... and changed nothing
    assert summary["statuses"].get("failed_download", 0) == 0


def test_bad_key_stops_clearly_and_downloads_are_guarded(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus", [{"tags": ["dog", "red"]}])
    root = make_root(tmp_path / "root", ["dog"])
    with FlickrServer(corpus) as server:
        with pytest.raises(BadApiKey, match="code 100"):
            run_crawl(root, CrawlConfig(api_url=server.rest_url, **FAST), Credentials("wrong-key", "s"), log=lambda m: None)
        session = requests.Session()
        with pytest.raises(DownloadRefused, match="allow-list"):
            download_image(session, "http://example.com/1.jpg", root)
        url = f"{server.base_url}/1/7000000_abc_m.jpg"
        with pytest.raises(DownloadRefused, match="cap"):
            download_image(session, url, root, DownloadPolicy(max_bytes=100))
        with pytest.raises(DownloadRefused, match="pixel guard"):
            download_image(session, url, root, DownloadPolicy(max_pixels=100))
        assert download_image(session, url, root).width == 16


def test_real_flickr_needs_a_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLICKR_API_KEY", raising=False)
    with pytest.raises(BadApiKey, match="set FLICKR_API_KEY"):
        Credentials.from_environment("https://api.flickr.com/services/rest/")
    monkeypatch.setenv("FLICKR_API_KEY", "k")
    assert Credentials.from_environment("https://api.flickr.com/services/rest/").key == "k"


CRAWL_SCRIPT = """
import sys
from storage.layout import DataRoot
from tasks.crawling.crawler import CrawlConfig, run_crawl
from tasks.crawling.flickr_client import Credentials, RetryPolicy
from tasks.crawling.downloads import DownloadPolicy
from webvse_world.flickr_server import FlickrServer
root, corpus, key = DataRoot.resolve(sys.argv[1]), sys.argv[2], sys.argv[3]
with FlickrServer(corpus, api_keys={key}) as server:
    config = CrawlConfig(api_url=server.rest_url, per_keyword=8, per_page=5, calls_per_hour=10**6, download_workers=2,
                         retry=RetryPolicy(base_delay=0.001), download=DownloadPolicy(backoff=0.001))
    print(run_crawl(root, config, Credentials.from_environment(server.rest_url)))
"""


@pytest.mark.slow
def test_sigkill_then_rerun_ends_with_the_same_set_and_no_secret_anywhere(tmp_path: Path) -> None:
    straight_root, corpus = _world_root(tmp_path / "a")
    killed_root = make_root(tmp_path / "b", read_table(straight_root.keywords, KEYWORDS)["keyword"].tolist())
    write_table(killed_root.clean_captions, read_table(straight_root.clean_captions, CLEAN_CAPTIONS), CLEAN_CAPTIONS)
    key = "sekrit-KEY-4242"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLICKR_API_KEY": key, "FLICKR_API_SECRET": "sekrit-SECRET-77"}
    logs = []

    def crawl(root: DataRoot) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", CRAWL_SCRIPT, str(root.root), str(corpus), key]
        return subprocess.run(command, env=env, capture_output=True, text=True, check=True)

    straight = crawl(straight_root)
    logs.append(straight.stdout + straight.stderr)

    victim = subprocess.Popen([sys.executable, "-c", CRAWL_SCRIPT, str(killed_root.root), str(corpus), key], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and victim.poll() is None:
        if killed_root.web_photos.is_file() and len(read_table(killed_root.web_photos, WEB_PHOTOS)) >= 30:
            break
        time.sleep(0.02)
    assert victim.poll() is None, "the crawl finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    logs.append(victim.communicate()[0])
    rerun = crawl(killed_root)
    logs.append(rerun.stdout + rerun.stderr)

    assert _kept(killed_root) == _kept(straight_root)
    table = crawled(killed_root)
    assert table.index.is_unique
    referenced = {root_row for root_row in table["sha256"] if root_row}
    files = [p for p in killed_root.web_images_dir.rglob("*") if p.is_file()]
    assert {p.stem for p in files} == referenced and not [p for p in files if p.suffix == ".tmp"]  # no orphans
    for secret in (key, "sekrit-SECRET-77"):
        assert all(secret not in log for log in logs)
        for path in list(killed_root.root.rglob("*")) + list(straight_root.root.rglob("*")):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    assert repr(Credentials(key, "x")) == "Credentials(key=***, secret=***)"


def test_hourly_rate_limit_is_shared_through_its_file(tmp_path: Path) -> None:
    from tasks.crawling.flickr_client import HourlyRateLimit

    now = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    state = tmp_path / "calls.log"
    first = HourlyRateLimit("k", 3, state, sleep=sleep, clock=lambda: now[0])
    second = HourlyRateLimit("k", 3, state, sleep=sleep, clock=lambda: now[0])  # another process, same file
    for limiter in (first, second, first):
        limiter.acquire()
        now[0] += 10
    assert slept == []
    second.acquire()  # the 4th call within the hour waits until the 1st leaves the window
    assert slept == [pytest.approx(3600 - 30)]
    assert len(state.read_text().split()) == 3


def test_the_owner_limit_holds_across_keywords_and_the_first_tags_rule_compares_five(tmp_path: Path) -> None:
    """Wrong versions: a per-keyword owner count (an owner's photos found by two keywords give 6+),
    or a first-tags key of 4 tags (two photos differing only in the 5th tag are not twins)."""
    photos = [{"id": f"d{i}", "owner": "prolific@N01", "tags": ["dog", "red", f"d{i}"]} for i in range(3)]
    photos += [{"id": f"c{i}", "owner": "prolific@N01", "tags": ["cat", "red", f"c{i}"]} for i in range(3)]
    photos += [
        {"id": "fivea", "tags": ["boat", "red", "ball", "beach", "tree", "house"]},
        {"id": "fiveb", "tags": ["boat", "red", "ball", "beach", "bird", "house"]},  # 5th tag differs: not a twin
        {"id": "fivec", "tags": ["boat", "red", "ball", "beach", "tree", "car"]},  # same first 5: a twin of fivea
    ]
    corpus = make_corpus(tmp_path / "corpus", photos)
    root = make_root(tmp_path / "root", ["dog", "cat", "boat"])
    with FlickrServer(corpus) as server:
        run_crawl(root, CrawlConfig(api_url=server.rest_url, **FAST), Credentials(DEFAULT_KEY, "s"), log=lambda m: None)
    status = crawled(root)["status"].to_dict()
    owner_kept = [p["id"] for p in photos[:6] if status[p["id"]] == "kept"]
    assert len(owner_kept) == 5 and sum(status[p["id"]] == "rejected:owner_limit" for p in photos[:6]) == 1
    assert status["fiveb"] == "kept"  # shares only its first 4 tags with the others
    assert sorted([status["fivea"], status["fivec"]]) == ["kept", "rejected:same_first_tags"]  # the newer one is kept

"""What a hostile, flaky Flickr does to the crawl: bad records, error codes, crowded days,
broken images, redirects, kills and concurrent crawls, against the local Flickr server."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest
import requests
from test_crawl import FAST, crawled, make_corpus, make_root

from storage.layout import DataRoot
from storage.locks import ResourceBusy
from tasks.crawling.config import CrawlConfig
from tasks.crawling.crawler import run_crawl
from tasks.crawling.downloads import DownloadPolicy, DownloadRefused, download_image
from tasks.crawling.flickr_client import Credentials, FlickrRefused, RetryPolicy
from webvse_world.flickr_server import DEFAULT_KEY, Faults, FlickrServer

KEY = Credentials(DEFAULT_KEY, "s")
DAY_START = 1_500_000_000
NOW = 1_700_000_000  # after every upload of these corpora


def _crawl(root: DataRoot, server: FlickrServer, lines: list[str] | None = None, **settings: object) -> dict[str, object]:
    """A crawl at one fixed "now": a second crawl is then the same night's, never one that
    began a second later and so searches the uploads of that second (one more API call)."""
    config = CrawlConfig(api_url=server.rest_url, **{**FAST, **settings})  # type: ignore[arg-type]
    return run_crawl(root, config, KEY, log=(lines.append if lines is not None else lambda m: None), clock=lambda: NOW)


def test_a_malformed_record_is_rejected_with_its_reason_not_fatal_and_a_resume_completes(tmp_path: Path) -> None:
    photos = [{"id": "good1", "tags": ["dog", "red", "ball"]}, {"id": "noowner", "owner": "", "tags": ["dog", "red", "boat"]},
              {"id": "good2", "tags": ["dog", "cat", "tree"]}]  # fmt: skip
    corpus = make_corpus(tmp_path / "corpus", photos)
    root = make_root(tmp_path / "root", ["dog"])
    with FlickrServer(corpus) as server:
        summary = _crawl(root, server)
        again = _crawl(root, server)  # the page was committed: a resume does not meet the record again
    status = crawled(root)["status"].to_dict()
    assert status == {"good1": "kept", "noowner": "rejected:malformed", "good2": "kept"}
    assert summary["statuses"]["rejected:malformed"] == 1 and again["api_calls"] == 0


def test_flickr_s_temporary_code_105_is_retried_and_a_permanent_code_is_one_clear_error(tmp_path: Path) -> None:
    photos = [{"tags": ["dog", "red", f"t{i}"]} for i in range(30)]
    corpus = make_corpus(tmp_path / "corpus", photos)
    calm, flaky = make_root(tmp_path / "calm", ["dog", "red"]), make_root(tmp_path / "flaky", ["dog", "red"])
    with FlickrServer(corpus) as server:
        _crawl(calm, server, per_page=5)
    with FlickrServer(corpus, faults=Faults(unavailable_rate=0.4, seed=3)) as server:
        _crawl(flaky, server, per_page=5)
        assert server.stats["unavailable"] > 0
    assert crawled(flaky)["status"].to_dict() == crawled(calm)["status"].to_dict()

    with FlickrServer(corpus) as server:  # code 18 (illogical arguments): no retry can help
        with pytest.raises(FlickrRefused, match=r"code 18 \(illogical arguments\)"):
            _crawl(
                make_root(tmp_path / "bad", ["dog"]), server, sort="no-such-sort", retry=RetryPolicy(attempts=8, base_delay=5.0)
            )
        assert server.stats["rest"] == 1


def test_a_day_crowded_past_the_cap_is_split_down_to_seconds(tmp_path: Path) -> None:
    """4,800 results in one day; the eligible photos are the oldest 500, past rank 4,000 of every
    window a day long or longer. Split to windows that hold less than the cap, all are reachable."""
    photos = [
        {"tags": ["dog", "red", f"e{i}"] if i >= 4300 else ["dog", f"x{i}"], "date": DAY_START + 4800 - i, "owner": f"o{i}"}
        for i in range(4800)
    ]  # fmt: skip  (i = rank, newest first)
    corpus = make_corpus(tmp_path / "corpus", photos)
    root = make_root(tmp_path / "root", ["dog"])
    with FlickrServer(corpus) as server:
        summary = _crawl(root, server, per_keyword=200, per_page=500)
    assert summary["kept"] == 200 and summary["unreachable"] == {}


def test_results_beyond_the_cap_within_one_second_are_counted_as_unreachable(tmp_path: Path) -> None:
    photos = [{"id": f"p{i:05d}", "tags": ["dog", f"x{i}"], "date": DAY_START} for i in range(4100)]
    corpus = make_corpus(tmp_path / "corpus", photos)
    root = make_root(tmp_path / "root", ["dog"])
    lines: list[str] = []
    with FlickrServer(corpus) as server:
        summary = _crawl(root, server, lines, per_page=500)
    assert summary["unreachable"] == {"dog": 100}
    assert any("100 results uploaded in the same second" in line for line in lines)


def test_only_stored_photos_take_quota_owner_slots_and_first_tag_keys(tmp_path: Path) -> None:
    (tmp_path / "corpus" / "images").mkdir(parents=True)
    (tmp_path / "corpus" / "images" / "html.jpg").write_bytes(b"<html><body>Photo not found</body></html>")
    (tmp_path / "corpus" / "images" / "empty.jpg").write_bytes(b"")
    broken = [  # the newest: the search ranks them first
        {"id": "bhtml", "tags": ["dog", "ball", "beach", "red", "boat", "z"], "file": "images/html.jpg", "date": DAY_START + 3},
        {"id": "bgone", "owner": "flood@N01", "tags": ["dog", "cat", "q1"], "file": "images/missing.jpg", "date": DAY_START + 2},
        {"id": "bempty", "tags": ["dog", "cat", "q2"], "file": "images/empty.jpg", "date": DAY_START + 1},
    ]
    good = [{"id": "twin", "tags": ["dog", "ball", "beach", "red", "boat", "z"]}]  # same first 5 tags as the broken bhtml
    good += [{"id": f"flood{i}", "owner": "flood@N01", "tags": ["dog", "cat", f"f{i}"]} for i in range(5)]
    good += [{"id": f"more{i}", "tags": ["dog", "red", f"m{i}"]} for i in range(4)]
    corpus = make_corpus(tmp_path / "corpus", broken + good)
    root = make_root(tmp_path / "root", ["dog"])
    lines: list[str] = []
    with FlickrServer(corpus) as server:
        summary = _crawl(root, server, lines, per_keyword=10, per_page=50, download=DownloadPolicy(backoff=5.0))
        assert server.stats["image"] < 3 * 2 + len(good) + 1  # the permanent failures were fetched once each, no retry
    status = crawled(root)["status"].to_dict()
    assert {status[b["id"]] for b in broken} == {"failed_download"}
    reasons = " ".join(lines)
    assert (
        "photo bhtml: not an image" in reasons
        and "bgone_abc_m.jpg: HTTP 404" in reasons
        and "photo bempty: zero bytes" in reasons
    )
    assert all(status[g["id"]] == "kept" for g in good)  # the twin, all 5 of the owner's others, 10 for the keyword
    assert summary["kept"] == 10
    assert any("10 stored, 3 failed to download" in line for line in lines), lines


def test_downloads_fail_fast_on_permanent_errors_back_off_on_transient_ones_and_keep_one_deadline(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus", [{"id": "1", "tags": ["dog", "a"]}])
    root = DataRoot.resolve(tmp_path / "root")
    with FlickrServer(corpus) as server, requests.Session() as session:
        missing = f"{server.base_url}/1/999_abc_m.jpg"
        with pytest.raises(DownloadRefused, match="HTTP 404"):
            download_image(session, missing, root, DownloadPolicy(attempts=10, backoff=5.0))
        assert server.stats["image"] == 1
    with FlickrServer(corpus, faults=Faults(truncated_image_rate=1.0)) as server, requests.Session() as session:
        with pytest.raises(DownloadRefused, match="no valid image after 3 attempts"):
            download_image(session, f"{server.base_url}/1/1_abc_m.jpg", root, DownloadPolicy(attempts=3, backoff=0.001))
        assert server.stats["image"] == 3  # truncated bodies are transient: retried
    with FlickrServer(corpus, faults=Faults(slow_rate=1.0, slow_seconds=1.0)) as server, requests.Session() as session:
        with pytest.raises(DownloadRefused, match="deadline"):
            download_image(session, f"{server.base_url}/1/1_abc_m.jpg", root, DownloadPolicy(deadline=0.3, backoff=0.01))


def test_the_allow_list_is_checked_on_every_redirect_hop(tmp_path: Path) -> None:
    photos = [
        {"id": "1", "tags": ["dog", "a"]},
        {"id": "2", "tags": ["dog", "b"], "file": "redirect:http://images.example.net/stolen.jpg"},
    ]
    corpus = make_corpus(tmp_path / "corpus", photos)
    root = DataRoot.resolve(tmp_path / "root")
    with FlickrServer(corpus) as server, requests.Session() as session:
        with pytest.raises(
            DownloadRefused, match="host of http://images.example.net/stolen.jpg is not on the download allow-list"
        ):
            download_image(session, f"{server.base_url}/1/2_abc_m.jpg", root)
        assert not list(root.web_images_dir.rglob("*.jpg")) if root.web_images_dir.exists() else True


def test_a_second_crawl_of_a_root_is_refused_naming_the_holder_and_temporary_files_are_swept(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus", [{"tags": ["dog", "red", "ball"]}])
    root = make_root(tmp_path / "root", ["dog"])
    root.web_dir.mkdir(parents=True, exist_ok=True)
    leftover = root.web_dir / ".photos.parquet.k1ll3d.tmp"
    leftover.write_bytes(b"half a table")
    with FlickrServer(corpus) as server:
        with open(root.crawl_lock, "a+") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            held.write("pid 4242 on worker-7 since 2026-11-24T02:00:00+00:00")
            held.flush()
            with pytest.raises(ResourceBusy, match="in use by pid 4242 on worker-7"):
                _crawl(root, server)
        assert leftover.exists()  # the holder's files are not touched
        _crawl(root, server)
    assert not leftover.exists()


def test_the_hourly_budget_of_a_key_is_shared_by_every_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBVSE_STATE_DIR", str(tmp_path / "state"))
    corpus = make_corpus(tmp_path / "corpus", [{"tags": ["dog", "red", "ball"]}])
    real_key = Credentials("a-real-looking-key", "s")
    calls = 0
    with FlickrServer(corpus, api_keys={"a-real-looking-key"}) as server:
        for name in ("one", "two"):
            summary = run_crawl(
                make_root(tmp_path / name, ["dog"]), CrawlConfig(api_url=server.rest_url, **FAST), real_key, log=lambda m: None
            )
            calls += int(summary["api_calls"])  # type: ignore[call-overload]
    budget = list((tmp_path / "state").glob("api-calls-*.log"))
    assert len(budget) == 1 and len(budget[0].read_text().split()) == calls == 2

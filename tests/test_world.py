"""The generated world: Karpathy round trip, long tail, noisy corpus, Flickr server."""

from __future__ import annotations

import io
import json
import socket
from collections import Counter
from pathlib import Path

import flickrapi
import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image

from storage.tables import FLICKR_CORPUS, read_table, write_table
from webvse_model.datasets.karpathy import read_karpathy
from webvse_world.clean import CleanSizes, generate_clean_dataset
from webvse_world.concepts import OBJECTS
from webvse_world.flickr_server import DEFAULT_KEY, CorpusError, Faults, FlickrServer
from webvse_world.web import FOREIGN_TAGS, WebSizes, generate_web_corpus

EXTRAS = "tags,owner_name,license,url_m,date_upload"


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_clean_dataset(tmp_path_factory.mktemp("clean"), CleanSizes(train=600, val=10, test=300), seed=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    generate_web_corpus(folder, WebSizes(photos_per_object=12, owners=60, flooding_owners=2, flood_size=30), seed=1)
    return folder


def _client(server: FlickrServer, key: str = DEFAULT_KEY) -> flickrapi.FlickrAPI:
    api = flickrapi.FlickrAPI(key, "secret", format="parsed-json", store_token=False)
    api.REST_URL = server.rest_url
    return api


def test_clean_dataset_round_trips_through_the_karpathy_reader(clean: Path) -> None:
    data = read_karpathy(clean)
    assert data.counts == {"train": 600, "val": 10, "test": 300}
    assert data.empty_captions == 0
    first = data.images[0]
    assert len(first.captions) == 5 and len(set(first.captions)) == 5
    assert first.tokens[0] == tuple(w for w in first.tokens[0] if w.isalnum() or "'" in w)
    with Image.open(first.path) as image:
        assert image.format == "JPEG" and image.size == (256, 256)


def test_generation_is_deterministic(clean: Path, tmp_path: Path) -> None:
    again = generate_clean_dataset(tmp_path, CleanSizes(train=600, val=10, test=300), seed=1)
    assert json.loads(again.read_text())["images"] == json.loads(clean.read_text())["images"]
    assert (tmp_path / "images" / "test_00007.jpg").read_bytes() == (clean.parent / "images" / "test_00007.jpg").read_bytes()


def test_concepts_are_long_tailed_in_train_and_flat_in_test(clean: Path) -> None:
    images = json.loads(clean.read_text())["images"]
    count = {
        split: Counter(o for im in images if im["split"] == split for o in im["concepts"]["objects"])
        for split in ("train", "test")
    }
    ranked = [o.name for o in OBJECTS]
    train = np.array([count["train"][o] for o in ranked])
    test = np.array([count["test"][o] for o in ranked])
    assert train[:5].sum() > 0.4 * train.sum()  # the head dominates training captions
    assert train[-10:].sum() < 0.12 * train.sum()  # the tail is scarce in training ...
    assert (test[-10:] > 0).all() and test[-10:].sum() > 0.2 * test.sum()  # ... but present at test time
    # the captions really use synonyms: the same concept appears under several words
    words = Counter(w for im in images for s in im["sentences"] for w in s["tokens"])
    assert words["puppy"] > 0 and words["dog"] > 0 and words["dogs"] > 0


def test_web_corpus_is_noisy_like_flickr(corpus: Path) -> None:
    photos = read_table(corpus / "photos.parquet", FLICKR_CORPUS)
    depicts = Counter(photos["depicts"])
    assert min(depicts.values()) >= 12  # every concept covered, rare ones included
    tags = [t for ts in photos["tags"] for t in ts]
    assert any(t in FOREIGN_TAGS for t in tags)
    assert any(t in ("canon", "nikon", "iphone", "dslr") for t in tags)
    assert any(":" in t and "=" in t for t in tags)  # machine tags
    assert Counter(photos["owner"]).most_common(1)[0][1] >= 30  # an owner flood
    dupes = photos[photos["duplicate_of"] != ""]
    assert len(dupes) > 0
    original = photos.set_index("photo_id").loc[dupes.iloc[0]["duplicate_of"]]
    assert sorted(dupes.iloc[0]["tags"]) == sorted(original["tags"]) and dupes.iloc[0]["file"] == original["file"]


def test_flickrapi_search_pages_extras_and_images(corpus: Path) -> None:
    with FlickrServer(corpus) as server:
        api = _client(server)
        first = api.photos.search(tags="dog", extras=EXTRAS, per_page=3, page=1)["photos"]
        total = int(first["total"])
        assert total >= 3 and int(first["pages"]) == -(-total // 3)
        assert first["perpage"] == 3 and len(first["photo"]) == 3
        photo = first["photo"][0]
        assert {"id", "owner", "secret", "server", "title", "tags", "ownername", "license", "url_m", "dateupload"} <= set(photo)
        assert "dog" in photo["tags"].split()
        second = api.photos.search(tags="dog", extras=EXTRAS, per_page=3, page=2)["photos"]["photo"]
        assert not {p["id"] for p in second} & {p["id"] for p in first["photo"]}
        dates = [int(p["dateupload"]) for p in api.photos.search(tags="dog", extras=EXTRAS, per_page=50)["photos"]["photo"]]
        assert dates == sorted(dates, reverse=True)  # date-posted-desc by default
        window = api.photos.search(tags="dog", extras=EXTRAS, min_upload_date=dates[-1], max_upload_date=dates[0])["photos"]
        table = read_table(corpus / "photos.parquet", FLICKR_CORPUS)
        tagged = table[[("dog" in [t.lower() for t in ts]) for ts in table["tags"]]]
        expected = tagged["date_upload"].between(dates[-1], dates[0]).sum()
        assert int(window["total"]) == expected  # min/max_upload_date are inclusive, as on Flickr
        image = requests.get(photo["url_m"], timeout=5)
        assert image.headers["Content-Type"] == "image/jpeg"
        assert Image.open(io.BytesIO(image.content)).size == (256, 256)
        assert requests.get(photo["url_m"].replace(photo["secret"], "0" * 10), timeout=5).status_code == 404
        licences = api.photos.licenses.getInfo()["licenses"]["license"]
        assert [lic["id"] for lic in licences] == list(range(11))


def test_flickr_error_envelope(corpus: Path) -> None:
    with FlickrServer(corpus) as server:
        with pytest.raises(flickrapi.FlickrError) as bad_key:
            _client(server, key="not-a-key").photos.search(text="dog")
        assert bad_key.value.code == 100
        api = _client(server)
        for call, code in ((lambda: api.photos.nosuch(), 112), (lambda: api.photos.search(), 3),
                           (lambda: api.photos.search(text="dog", per_page="many"), 18),
                           (lambda: api.photos.search(text="dog", tag_mode="some"), 18)):  # fmt: skip
            with pytest.raises(flickrapi.FlickrError) as err:
                call()
            assert err.value.code == code
        raw = requests.post(
            server.rest_url, data={"method": "flickr.photos.search", "api_key": DEFAULT_KEY, "format": "json"}, timeout=5
        )
        assert raw.status_code == 200 and raw.json() == {
            "stat": "fail", "code": 3,
            "message": "Parameterless searches have been disabled. Please use flickr.photos.getRecent instead.",
        }  # fmt: skip


def test_the_4000_result_cap_and_string_counts(tmp_path: Path) -> None:
    rows = [{"photo_id": str(10**9 + i), "owner": f"{i % 900}@N01", "ownername": "", "title": "t", "tags": ["dog"], "license": 4,
             "date_upload": 1_300_000_000 + i, "server": "1", "secret": "abc", "width": 256, "height": 256, "file": "x.jpg",
             "depicts": "dog", "duplicate_of": ""} for i in range(4300)]  # fmt: skip
    write_table(tmp_path / "photos.parquet", pd.DataFrame(rows), FLICKR_CORPUS)
    with FlickrServer(tmp_path, faults=Faults(string_counts_rate=1.0)) as server:
        api = _client(server)
        page8 = api.photos.search(tags="dog", per_page=500, page=8)["photos"]
        page9 = api.photos.search(tags="dog", per_page=500, page=9)["photos"]
        assert page8["total"] == "4300" and page8["pages"] == "9"  # strings, as Flickr sometimes sends
        assert [p["id"] for p in page9["photo"]] == [p["id"] for p in page8["photo"]]  # past the cap: repeats
        assert api.photos.search(tags="dog", per_page=900)["photos"]["perpage"] == 500  # clamped
        old = api.photos.search(tags="dog", per_page=500, max_upload_date=1_300_000_099)["photos"]
        assert old["total"] == "100"  # date windows reach what the cap hides


def test_each_fault_kind_at_its_rate(corpus: Path) -> None:
    faults = Faults(
        error_rate=0.2, throttle_rate=0.1, slow_rate=0.05, slow_seconds=0.01, truncated_json_rate=0.1, retry_after=7, seed=3
    )
    outcomes: Counter[str] = Counter()
    with FlickrServer(corpus, faults=faults) as server:
        for i in range(600):
            r = requests.post(
                server.rest_url, data={"method": "flickr.test.echo", "api_key": DEFAULT_KEY, "format": "json", "n": i}, timeout=5
            )
            if r.status_code in (500, 503):
                outcomes["error"] += 1
            elif r.status_code == 429:
                outcomes["throttle"] += 1
                assert r.headers["Retry-After"] == "7"
            else:
                try:
                    r.json()
                    outcomes["ok"] += 1
                except ValueError:
                    outcomes["truncated"] += 1
        assert server.stats["slow"] == pytest.approx(30, abs=15)
    for kind, rate in (("error", 0.2), ("throttle", 0.1), ("truncated", 0.1)):
        assert outcomes[kind] / 600 == pytest.approx(rate, abs=0.05), (kind, outcomes)
    photos = read_table(corpus / "photos.parquet", FLICKR_CORPUS).head(200)
    broken = 0
    with FlickrServer(corpus, faults=Faults(truncated_image_rate=0.3, seed=3)) as server:
        for _, p in photos.iterrows():
            body = requests.get(f"{server.base_url}/{p['server']}/{p['photo_id']}_{p['secret']}_m.jpg", timeout=5).content
            try:
                Image.open(io.BytesIO(body)).load()
            except OSError:
                broken += 1
    assert broken / 200 == pytest.approx(0.3, abs=0.08)


def test_faults_are_reproducible_and_a_retry_gets_a_fresh_draw(corpus: Path) -> None:
    def statuses() -> list[int]:
        with FlickrServer(corpus, faults=Faults(error_rate=0.5, seed=11)) as server:
            data = {"method": "flickr.test.echo", "api_key": DEFAULT_KEY, "format": "json"}
            return [requests.post(server.rest_url, data=data, timeout=5).status_code for _ in range(40)]

    first = statuses()
    assert first == statuses()
    assert 200 in first and any(s >= 500 for s in first)  # the same request fails, then succeeds


def test_start_stop_bad_corpus_and_quiet_logs(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = FlickrServer(corpus, access_log=True).start()
    port = server.httpd.server_address[1]
    with requests.Session() as client:  # closed before the server: the server's port keeps no TIME_WAIT connection
        stat = client.get(f"{server.rest_url}?method=flickr.test.echo&format=json&api_key={DEFAULT_KEY}", timeout=5).json()[
            "stat"
        ]
    assert stat == "ok"  # serving as soon as start() returns
    server.stop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # the port is free again
    log = capsys.readouterr().out
    assert "/services/rest/" in log and DEFAULT_KEY not in log
    with pytest.raises(CorpusError, match="does not exist"):
        FlickrServer(tmp_path / "nothing")
    (tmp_path / "photos.parquet").write_text("garbage")
    with pytest.raises(CorpusError, match="not a readable corpus table"):
        FlickrServer(tmp_path)
    with pytest.raises(ValueError, match="loopback"):
        FlickrServer(corpus, host="0.0.0.0")


def test_the_world_server_s_default_key_is_the_one_the_crawler_sends_to_a_local_server() -> None:
    """The crawler declares its offline key itself (it never imports the stand-in); the stand-in's
    default must be that key, or `webvse flickr-server` and an un-keyed local crawl disagree."""
    from tasks.crawling.flickr_client import OFFLINE_KEY

    assert DEFAULT_KEY == OFFLINE_KEY

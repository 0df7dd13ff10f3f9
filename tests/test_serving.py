"""Serving (issue 16): the index step, the retriever both ways, the HTTP API and its bad inputs.

One tiny pipeline run (world -> ... -> promote -> index) on a private data root; the API is
exercised through FastAPI's test client over the real app, model and index files. Expected
rankings are recomputed here from the stored embeddings by brute force (numpy argsort), never
read back from the code under test.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from pipeline_support import tiny_config

from flows.pipeline import webvse
from storage.errors import InputError
from storage.layout import INDEX_IVF_FILE
from tasks.serving.app import MAX_BODY_BYTES, create_app
from tasks.serving.index import build_index, index_dir, index_is_current
from tasks.serving.index_settings import IndexSettings
from tasks.serving.retrieval import MAX_DEPTH, MAX_K, Retriever, StaleIndexError
from tasks.serving.vector_search import VectorSearch
from tasks.training.runs import final_stage_store
from webvse_model.train import load_model, save_model


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    config = tiny_config(tmp_path_factory.mktemp("serving") / "data", train={"baseline": False})
    outcome = webvse(config=config)
    run = Path(outcome["runs"]["webly"])
    retriever = Retriever.open(index_dir(run), device="cpu")
    return config, outcome, run, retriever, TestClient(create_app(retriever))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.mark.slow
def test_the_flow_s_index_step_embeds_the_test_split_with_the_final_stage(served) -> None:
    config, outcome, run, retriever, _ = served
    manifest = outcome["index"]
    images = pd.read_parquet(config.root.clean_images)
    assert manifest["run_dir"] == str(run) and manifest["stage"] == "stage2" and manifest["search"] == "exact"
    assert manifest["items"] == int((images["split"] == "test").sum()) == 20
    assert manifest["captions"] == len(pd.read_parquet(config.root.clean_captions))
    evaluation = pd.read_parquet(run / "evaluation.parquet").set_index("stage").loc["stage2"]
    assert manifest["test_metrics"]["t2i_r10"] == pytest.approx(evaluation["t2i_r10"])
    assert manifest["test_metrics"]["i2t_r1"] == pytest.approx(evaluation["i2t_r1"])
    # the stored vectors are the final stage's embeddings of the items' features, in item order
    items = pd.read_parquet(index_dir(run) / "items.parquet")
    assert set(items["sha256"]) == set(images.loc[images["split"] == "test", "sha256"])
    norms = np.linalg.norm(np.stack(items["embedding"]), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)
    assert index_is_current(index_dir(run), run)


@pytest.mark.slow
def test_text_to_images_is_the_exact_ranking_with_pages_and_the_query_s_score_range(served) -> None:
    _, _, _, retriever, client = served
    query = "a red dog on the beach"
    vector, unknown = retriever.encode_text(query)
    scores = retriever.index.images.vectors @ vector
    expected = [retriever.index.items["sha256"][i] for i in np.argsort(-scores, kind="stable")[:10]]
    first = client.get("/api/text-to-images", params={"q": query, "k": 5}).json()
    second = client.get("/api/text-to-images", params={"q": query, "k": 5, "page": 2}).json()
    assert [h["id"] for h in first["hits"] + second["hits"]] == expected
    assert [h["rank"] for h in first["hits"] + second["hits"]] == list(range(1, 11))
    assert [h["score"] for h in first["hits"]] == pytest.approx(sorted(scores, reverse=True)[:5], abs=1e-5)
    assert first["score_range"] == pytest.approx(
        {"min": scores.min(), "median": float(np.median(scores)), "max": scores.max()}, abs=1e-5
    )
    assert first["total"] == 20 and first["unknown_words"] == unknown == []
    assert first["hits"][0]["image_url"] == f"/images/{expected[0]}" and first["hits"][0]["labels"]
    partly = client.get("/api/text-to-images", params={"q": "a dog zzyzx"}).json()
    assert partly["unknown_words"] == ["zzyzx"] and len(partly["hits"]) == 10


@pytest.mark.slow
def test_image_to_captions_by_id_and_by_upload_agree_and_mark_the_image_s_own_captions(served) -> None:
    config, _, _, retriever, client = served
    items = retriever.index.items
    image_id = items["sha256"][3]
    by_id = client.get("/api/image-to-captions", params={"id": image_id, "k": 10}).json()
    bank = retriever.index.captions
    scores = retriever.index.caption_vectors.vectors @ retriever.index.images.vectors[3]
    order = np.argsort(-scores, kind="stable")[:10]
    assert [h["text"] for h in by_id["hits"]] == [bank["text"][i] for i in order]
    assert [h["own"] for h in by_id["hits"]] == [bank["image_sha256"][i] == image_id for i in order]
    own_texts = set(bank.loc[bank["image_sha256"] == image_id, "text"])
    assert len(own_texts) == 5
    # the upload goes through the features step's decoding and CNN at the run's precision: the same vector
    path = Path(items["path"][3])
    uploaded = retriever.encode_upload(path.read_bytes())
    assert float(_unit(uploaded) @ retriever.index.images.vectors[3]) > 0.999
    by_upload = client.post(
        "/api/image-to-captions", params={"k": 10}, files={"image": (path.name, path.read_bytes(), "image/jpeg")}
    ).json()
    assert [h["text"] for h in by_upload["hits"]] == [h["text"] for h in by_id["hits"]]
    thumb = client.get(f"/images/{image_id}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status", "message"),
    [
        ("get", "/api/text-to-images", {"params": {"q": "   "}}, 400, "the query is empty"),
        ("get", "/api/text-to-images", {"params": {"q": "dog", "k": 0}}, 400, f"k must be between 1 and {MAX_K}"),
        ("get", "/api/text-to-images", {"params": {"q": "dog", "k": MAX_K + 1}}, 400, f"k must be between 1 and {MAX_K}"),
        ("get", "/api/text-to-images", {"params": {"q": "dog", "page": 0}}, 400, "page starts at 1"),
        ("get", "/api/text-to-images", {"params": {"q": "dog", "k": 100, "page": 11}}, 400, f"results go {MAX_DEPTH} deep"),
        ("get", "/api/text-to-images", {"params": {"q": "dog", "k": "many"}}, 422, "k: "),
        ("get", "/api/text-to-images", {"params": {"q": "xyzzy plugh"}}, 400, "none of its words (xyzzy, plugh)"),
        ("get", "/api/image-to-captions", {"params": {"id": "0" * 64}}, 404, "is not in this index"),
        ("get", "/api/image-to-captions", {"params": {"id": "../../etc/passwd"}}, 400, "64 lower-case hex digits"),
        ("get", "/api/image-to-captions", {}, 400, "name an image of the collection"),
        ("get", "/images/..%2F..%2Fetc%2Fpasswd", {}, 404, "images are /images/<sha256>"),
        ("get", "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd", {}, 404, "images are /images/<sha256>"),
        ("get", "/images/../../../etc/passwd", {}, 404, "images are /images/<sha256>"),
        ("get", "/images/%2e%2e", {}, 400, "64 lower-case hex digits"),
        ("get", "/images/" + "a" * 63 + "G", {}, 400, "64 lower-case hex digits"),
        (
            "post",
            "/api/image-to-captions",
            {"files": {"image": ("notes.txt", b"not an image at all", "text/plain")}},
            400,
            "not an image",
        ),
        ("post", "/api/image-to-captions", {"files": {"image": ("empty.jpg", b"", "image/jpeg")}}, 400, "the upload is empty"),
        ("post", "/api/image-to-captions", {"files": {"photo": ("a.jpg", b"\xff\xd8", "image/jpeg")}}, 400, "form field 'image'"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_clear_message_and_the_server_keeps_serving(
    served, method, url, kwargs, status, message
) -> None:
    _, _, _, _, client = served
    answer = getattr(client, method)(url, **kwargs)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"] and b"root:" not in answer.content  # never a file's content
    assert client.get("/health").status_code == 200


@pytest.mark.slow
def test_a_50_mb_upload_is_refused_before_it_is_parsed_declared_or_streamed(served) -> None:
    _, _, _, _, client = served
    big = b"\xff\xd8" + b"\0" * (50 * 2**20)
    declared = client.post("/api/image-to-captions", files={"image": ("big.jpg", big, "image/jpeg")})
    assert declared.status_code == 413 and "larger than" in declared.json()["error"]

    def chunks():  # no Content-Length: counted while it streams
        for _ in range(MAX_BODY_BYTES // 2**20 + 2):
            yield b"\0" * 2**20

    streamed = client.post(
        "/api/image-to-captions", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert streamed.status_code == 413
    assert client.get("/health").json()["items"] == 20


@pytest.mark.slow
def test_health_and_the_page_say_which_model_and_how_good(served) -> None:
    _, outcome, run, _, client = served
    health = client.get("/health").json()
    assert health["run"] == run.name and health["stage"] == "stage2" and health["items"] == 20
    assert health["test_metrics"]["t2i_r10"] == pytest.approx(outcome["index"]["test_metrics"]["t2i_r10"])
    page = client.get("/", params={"q": "a dog on the beach", "k": 4})
    assert page.status_code == 200 and page.text.count('class="thumb"') == 4
    assert run.name in page.text and "R@10" in page.text and "median" in page.text
    assert f"{health['items']} images ({health['collection']})" in page.text  # not a template's view of dict.items
    empty = client.get("/", params={"q": ""})
    assert empty.status_code == 400 and "the query is empty" in empty.text
    image_id = client.get("/api/text-to-images", params={"q": "dog", "k": 1}).json()["hits"][0]["id"]
    captions = client.get("/", params={"id": image_id})
    assert (
        captions.status_code == 200
        and captions.text.count('class="result caption"') == 10
        and f"/images/{image_id}" in captions.text
    )


@pytest.mark.slow
def test_a_retrained_model_makes_its_index_stale_and_the_server_refuses_it(served, tmp_path: Path) -> None:
    config, _, run, _, _ = served
    copy = tmp_path / "runs" / run.name
    shutil.copytree(run, copy)
    store = final_stage_store(copy)
    model = load_model(store, "best")
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # training went on
    save_model(store, "best", model, {"epoch": 99})
    assert not index_is_current(index_dir(copy), copy)
    with pytest.raises(StaleIndexError, match="rebuild it: webvse index --run"):
        Retriever.open(index_dir(copy), device="cpu")


@pytest.mark.slow
def test_an_approximate_index_measures_its_recall_against_exact_search(served) -> None:
    _, _, run, retriever, _ = served
    manifest = build_index(
        run, IndexSettings(collection="web", approximate="approximate", nprobe=64), device="cpu", log=lambda _: None
    )
    folder = index_dir(run, "web")
    assert manifest["search"] == "approximate (faiss IVF)" and (folder / INDEX_IVF_FILE).is_file()
    assert manifest["recall_at_10_vs_exact"] == 1.0  # nprobe 64 >= its sqrt(N) clusters: every list is scanned
    web = Retriever.open(folder, device="cpu")
    vector, _ = web.encode_text("a dog")
    exact = VectorSearch(web.index.images.vectors).search(vector, 5)[1][0]
    assert web.text_to_images("a dog", 5).hits[0].id == web.index.items["sha256"][exact[0]]
    assert json.loads((folder / "manifest.json").read_text())["items"] == len(web.index.items)


def test_ivf_recall_is_measured_not_assumed() -> None:
    """On clustered vectors an IVF that probes 1 of 16 lists misses neighbours across cluster
    borders, and probing every list finds them all; the reported recall is the overlap of the
    two top-10 sets, computed here by hand."""
    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(16, 32)))
    vectors = _unit(centres[rng.integers(0, 16, size=4000)] + 0.35 * rng.normal(size=(4000, 32))).astype(np.float32)
    queries = _unit(vectors[:100] + 0.2 * rng.normal(size=(100, 32))).astype(np.float32)
    one = VectorSearch.build(vectors, approximate=True, nlist=16, nprobe=1)
    exact_rows = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    approx_rows = one.search(queries, 10)[1]
    by_hand = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx_rows.tolist(), exact_rows.tolist())])
    assert one.recall_against_exact(queries, 10) == pytest.approx(by_hand)
    assert by_hand < 1.0
    every = VectorSearch.build(vectors, approximate=True, nlist=16, nprobe=16)
    assert every.recall_against_exact(queries, 10) == 1.0
    assert VectorSearch.build(vectors, approximate=False).recall_against_exact(queries, 10) == 1.0


def test_exact_search_ranks_ties_by_row_and_caps_k() -> None:
    vectors = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], dtype=np.float32)
    scores, rows = VectorSearch(vectors).search(np.array([1, 0], dtype=np.float32), 10)
    assert rows[0].tolist() == [0, 2, 3, 1] and scores[0].tolist() == pytest.approx([1, 1, 0.6, 0])
    with pytest.raises(InputError, match="non-empty"):
        VectorSearch(np.zeros((0, 2), dtype=np.float32))


@pytest.mark.slow
def test_a_folder_of_one_s_own_photos_is_indexed_through_the_features_step(served, tmp_path: Path) -> None:
    config, _, run, _, _ = served
    photos = tmp_path / "my photos"
    photos.mkdir()
    sources = sorted((config.root.root / "world" / "clean" / "images").glob("*.jpg"))[:3]
    for i, source in enumerate(sources):
        shutil.copy(source, photos / f"holiday-{i}.jpg")
    (photos / "broken.jpg").write_bytes(b"<html>not a photo</html>")
    (photos / "notes.txt").write_text("not an image file")
    manifest = build_index(run, IndexSettings(collection="folder", folder=str(photos)), device="cpu", log=lambda _: None)
    assert manifest["items"] == 3 and manifest["left_out"] == 1 and manifest["collection"].startswith("folder-my-photos-")
    mine = Retriever.open(index_dir(run, "folder", str(photos)), device="cpu")
    assert sorted(Path(p).name for p in mine.index.items["path"]) == ["holiday-0.jpg", "holiday-1.jpg", "holiday-2.jpg"]
    with pytest.raises(InputError, match="index.folder"):
        index_dir(run, "folder")
    image = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(image, format="PNG")
    assert len(mine.captions_for_upload(image.getvalue(), "red.png", k=3).hits) == 3


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _browser(executable: str, driver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = executable
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100", "--disable-gpu"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@pytest.mark.slow
def test_a_real_browser_searches_both_ways_on_the_served_page(served, tmp_path: Path) -> None:
    """`webvse serve` (real uvicorn, real CLI) driven by Debian's headless chromium through
    selenium: type a query, see thumbnails that loaded; upload a photo, see its captions.
    Screenshots land in tmp_path (and in $WEBVSE_SCREENSHOTS when set: the README's picture)."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and chromedriver, (
        "the browser test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver (.ci/run does)"
    )
    config, _, run, retriever, _ = served
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--data-root", str(config.root.root), "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    shots = [tmp_path] + ([Path(os.environ["WEBVSE_SCREENSHOTS"])] if os.environ.get("WEBVSE_SCREENSHOTS") else [])
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read())
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    server.stdout.read() if server.stdout else "server did not start"
                )
                time.sleep(0.5)
        assert health["run"] == run.name
        browser = _browser(chromium, chromedriver)
        try:
            wait = WebDriverWait(browser, 30)
            browser.get(f"http://127.0.0.1:{port}/")
            assert run.name in browser.find_element(By.ID, "model").text
            box = browser.find_element(By.NAME, "q")
            box.send_keys("a red dog on the beach", Keys.ENTER)
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "img.thumb")) == 10)
            loaded = "return Array.from(document.querySelectorAll('img.thumb')).every(i => i.complete && i.naturalWidth > 0)"
            wait.until(lambda b: b.execute_script(loaded))
            assert "cosine" in browser.find_element(By.ID, "results").text
            for folder in shots:
                folder.mkdir(parents=True, exist_ok=True)
                assert browser.save_screenshot(str(folder / "serve-text-to-images.png"))
            photo = Path(retriever.index.items["path"][0]).resolve()
            browser.find_element(By.CSS_SELECTOR, "#image-search input[type=file]").send_keys(str(photo))
            browser.find_element(By.CSS_SELECTOR, "#image-search button").click()
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "li.caption")) == 10)
            assert browser.execute_script("return document.getElementById('query-image').naturalWidth") > 0
            for folder in shots:
                assert browser.save_screenshot(str(folder / "serve-image-to-captions.png"))
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    for name in ("serve-text-to-images.png", "serve-image-to-captions.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_index_command_is_the_flow_s_step_and_a_second_call_is_cached(served, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    config, _, run, _, _ = served
    args = ["index", "--data-root", str(config.root.root), "--collection", "web", "--run", str(run)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "served from the cache" not in out and "web images" in out and "serve it: webvse serve" in out
    assert json.loads((index_dir(run, "web") / "manifest.json").read_text())["collection"] == "web"
    assert main(args) == 0
    assert "index: served from the cache" in capsys.readouterr().out

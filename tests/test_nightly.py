"""The nightly cycle: incremental crawls over a world with time, continued Stage II, promotion, rollback."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from pipeline_support import task_states, tiny_config
from test_crawl import FAST, make_corpus, make_root

from flows.pipeline import webvse
from storage.errors import InputError
from storage.layout import DataRoot
from storage.tables import CRAWL_NIGHTS, CRAWL_PROGRESS, FLICKR_CORPUS, KEYWORDS, MODELS, WEB_PHOTOS, read_table, write_table
from tasks.crawling.config import CrawlConfig
from tasks.crawling.crawler import run_crawl
from tasks.crawling.flickr_client import Credentials
from tasks.crawling.state import KEYWORD_DONE, CrawlState
from tasks.pipeline_config import PromoteConfig
from tasks.reporting.evaluation import latest_runs
from tasks.training.model_registry import model_in_use
from tasks.training.promotion import decide, rollback
from webvse_world.flickr_server import DEFAULT_KEY, FlickrServer
from webvse_world.web import DAY, advance_clock, read_clock, write_clock

# Night 2 must be promoted whatever its score and night 3 must not be, so that continuation from the
# promoted model and a refused promotion are both seen; `decide` itself is tested on real scores below.
MARGINS = (0.0, -1e6, 1e6)


@pytest.fixture(scope="module")
def three_nights(tmp_path_factory: pytest.TempPathFactory):
    config = tiny_config(
        tmp_path_factory.mktemp("nightly") / "data",
        world={"owners": 15, "uploads_per_night": 40},  # few owners: repeat uploaders meet their 5-photo limit
        crawl={"per_page": 10, "new_per_keyword": 5},
        vectors={"web_tags": False},  # the word space must not move between nights (see README: the night cycle)
    )
    nights = []
    for number, margin in enumerate(MARGINS, start=1):
        if number == 2:
            upload_copies_of_kept_photos(config.root, count=4)
        if number > 1:
            advance_clock(config.root.world_corpus_dir)
        in_use_before = model_in_use(config.root)
        state = webvse(
            config=config.model_copy(update={"promote": PromoteConfig(margin=margin)}), nightly=True, return_state=True
        )
        assert state.is_completed(), state.message
        nights.append({"state": state, "outcome": state.result(), "in_use_before": in_use_before})
    return config, nights


def upload_copies_of_kept_photos(root: DataRoot, count: int) -> None:
    """Tomorrow, another uploader posts copies of photos the crawl kept, with the same tags."""
    corpus = root.world_corpus_dir
    table = read_table(corpus / "photos.parquet", FLICKR_CORPUS)
    kept = read_table(root.web_photos, WEB_PHOTOS).query("status == 'kept'").head(count)
    originals = table.set_index("photo_id").loc[kept["photo_id"]].reset_index()
    now = read_clock(corpus)
    assert now is not None
    copies = originals.assign(
        photo_id=[f"8{n:09d}" for n in range(len(originals))],
        owner="copycat@N09",
        duplicate_of=originals["photo_id"],
        date_upload=now + 3600,
    )
    write_table(corpus / "photos.parquet", pd.concat([table, copies], ignore_index=True), FLICKR_CORPUS)


@pytest.mark.slow
def test_later_nights_search_only_the_new_uploads(three_nights) -> None:
    config, _ = three_nights
    root = config.root
    nights = read_table(root.crawl_nights, CRAWL_NIGHTS)
    assert nights["night"].tolist() == [1, 2, 3] and nights["finished"].all()
    assert (nights["until"].diff().dropna() == DAY).all()  # each night searches up to the corpus clock at its start
    keywords = len(read_table(root.keywords, KEYWORDS).head(config.crawl.max_keywords))
    # night 1 pages through the corpus; nights 2 and 3 need one search per keyword for a day's uploads
    assert nights["api_calls"].iloc[0] > keywords
    assert nights["api_calls"].iloc[1:].tolist() == [keywords, keywords]
    progress = read_table(root.crawl_progress, CRAWL_PROGRESS)
    windows = progress[progress["window_start"] != KEYWORD_DONE]
    for before, until in zip(nights["until"][:-1], nights["until"][1:]):
        searched = windows[windows["window_end"] == until]
        assert len(searched) == keywords and (searched["window_start"] == before + 1).all()
    photos = read_table(root.web_photos, WEB_PHOTOS)
    uploaded = read_table(root.world_corpus_dir / "photos.parquet", FLICKR_CORPUS).set_index("photo_id")["date_upload"]
    for night, until in zip(nights["night"], nights["until"]):
        decided = photos[photos["night"] == night]
        assert len(decided) > 0
        earliest = nights["until"][nights["night"] == night - 1].max() if night > 1 else 0
        assert ((uploaded[decided["photo_id"]] > earliest) & (uploaded[decided["photo_id"]] <= until)).all()
        assert (decided["status"] == "kept").groupby(decided["keyword"]).sum().max() <= (5 if night > 1 else 10)
    assert nights["new_kept"].tolist() == [int(((photos["night"] == n) & (photos["status"] == "kept")).sum()) for n in (1, 2, 3)]


@pytest.mark.slow
def test_the_owner_and_duplicate_rules_hold_across_nights(three_nights) -> None:
    config, _ = three_nights
    photos = read_table(config.root.web_photos, WEB_PHOTOS)
    kept = photos[photos["status"] == "kept"]
    assert kept.groupby("owner").size().max() <= 5
    assert not kept["tags"].map(lambda tags: tuple(tags[:5])).duplicated().any()
    later = photos[photos["night"] > 1]
    # owners already at their limit from night 1 uploaded again: refused on later nights
    assert (later["status"] == "rejected:owner_limit").any()
    corpus = read_table(config.root.world_corpus_dir / "photos.parquet", FLICKR_CORPUS).set_index("photo_id")
    copies = later[later["photo_id"].map(corpus["duplicate_of"]).isin(set(kept["photo_id"]))]  # the world's and the test's
    assert (copies["status"] == "rejected:same_first_tags").any() and (copies["status"] != "kept").all()


@pytest.mark.slow
def test_stage1_is_reused_and_stage2_continues_the_model_in_use(three_nights) -> None:
    config, nights = three_nights
    for night in nights[1:]:
        states = task_states(night["state"].state_details.flow_run_id)
        assert states["stage1"] == ["Cached", "Cached"] and states["vectors"] == ["Cached"]
        assert states["crawl"] == ["Completed"] and states["stage2"] == ["Completed"]
        run = Path(night["outcome"]["runs"]["webly"])
        assert run.name.startswith("night-")
        started = json.loads((run / "config.json").read_text())["stage2_from"]
        assert (run / started).resolve() == night["in_use_before"].resolve()
    assert "stage2_from" not in json.loads((Path(nights[0]["outcome"]["runs"]["webly"]) / "config.json").read_text())
    assert len({night["outcome"]["runs"]["webly"] for night in nights}) == 3  # one run per night, each kept


@pytest.mark.slow
def test_only_a_better_model_is_promoted_and_a_rollback_restores_the_one_before(three_nights) -> None:
    config, nights = three_nights
    root = config.root
    runs = [Path(night["outcome"]["runs"]["webly"]) for night in nights]
    history = read_table(root.models_history, MODELS)
    assert history["promoted"].tolist() == [True, True, False]
    assert history["candidate"].tolist() == [run.name for run in runs]
    assert history["in_use"].tolist() == ["", runs[0].name, runs[1].name]
    # the model in use is scored again on the same validation split: the same number as when it was the candidate
    assert history["in_use_val_rsum"].iloc[2] == pytest.approx(history["candidate_val_rsum"].iloc[1])
    assert "does not beat" in history["reason"].iloc[2]
    assert history["new_photos"].iloc[1:].tolist() == read_table(root.crawl_nights, CRAWL_NIGHTS)["new_kept"].iloc[1:].tolist()
    assert model_in_use(root) == runs[1]
    assert (root.runs_dir / "report" / "nights.png").read_bytes()[:4] == b"\x89PNG"
    assert latest_runs(root)["webly"] == str(runs[2]) and latest_runs(root)["in-use"] == str(runs[1])

    assert rollback(root, log=lambda _: None) == runs[0]
    assert model_in_use(root) == runs[0]
    assert read_table(root.models_history, MODELS)["reason"].iloc[-1] == "rolled back by hand"
    with pytest.raises(InputError, match="nothing to roll back to"):
        rollback(root, log=lambda _: None)
    assert rollback(root, runs[1].name, log=lambda _: None) == runs[1]


def test_promotion_needs_a_better_validation_score_than_the_model_in_use() -> None:
    assert decide(401.5, None, margin=5.0).promoted  # nothing in use yet
    assert not decide(401.5, 402.0, margin=0.0).promoted  # worse
    assert not decide(402.0, 402.0, margin=0.0).promoted  # equal is not better
    assert not decide(405.0, 402.0, margin=5.0).promoted  # better, but not by the margin
    assert decide(407.5, 402.0, margin=5.0).promoted


def _photo(n: int, date: int, owner: str | None = None) -> dict[str, object]:
    return {"owner": owner or f"{n}@N05", "tags": ["dog", "red", f"n{n}"], "date": date}


def test_a_fresh_crawl_replaces_web_only_once_it_has_finished(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus", [_photo(n, 1_400_000_000 + n) for n in range(30)])
    write_clock(corpus, 1_400_000_000 + 19)  # photos 20..29 are not uploaded yet
    root = make_root(tmp_path / "root", ["dog"])
    with FlickrServer(corpus) as server:
        now = read_clock(corpus)
        assert now is not None

        def crawl(mode: str) -> dict[str, object]:
            config = CrawlConfig(api_url=server.rest_url, per_keyword=100, mode=mode, **FAST)  # type: ignore[arg-type]
            return run_crawl(root, config, Credentials(DEFAULT_KEY, "s"), log=lambda _: None, clock=lambda: now)

        assert crawl("incremental")["kept"] == 20
        first = set(read_table(root.web_photos, WEB_PHOTOS)["sha256"])
        (root.web_dir / "marker").write_text("the old crawl")
        summary = crawl("fresh")
    assert summary["kept"] == 20 and summary["night"] == 1 and summary["mode"] == "fresh"
    assert (
        not (root.web_dir / "marker").exists() and not root.fresh_crawl().web_dir.exists() and not root.replaced_web_dir.exists()
    )
    assert set(read_table(root.web_photos, WEB_PHOTOS)["sha256"]) == first
    assert all(root.web_image(sha).is_file() for sha in first)
    assert read_table(root.crawl_nights, CRAWL_NIGHTS)["mode"].tolist() == ["fresh"]


def test_a_crawl_made_before_nights_were_recorded_is_night_one_up_to_its_last_download(tmp_path: Path) -> None:
    """Roots crawled by an older webvse: no crawl_nights table, no night column, "finished" rows ending at -1."""
    from test_crawl_state import _row

    root = DataRoot(tmp_path)
    rows = [
        {k: v for k, v in _row(i, "dog").items() if k != "night"} | {"fetched_at": f"2026-11-2{i}T10:00:00+00:00"}
        for i in range(3)
    ]
    write_table(root.web_photos, pd.DataFrame(rows), WEB_PHOTOS)
    done = {
        "keyword": "dog",
        "window_start": KEYWORD_DONE,
        "window_end": -1,
        "pages_done": 0,
        "done": True,
        "split": False,
        "api_calls": 3,
    }
    write_table(root.crawl_progress, pd.DataFrame([done]), CRAWL_PROGRESS)
    state = CrawlState(root)
    last_download = int(pd.Timestamp("2026-11-22T10:00:00+00:00").timestamp())
    assert [row["night"] for row in state.rows.values()] == [1, 1, 1]
    assert state.nights[0]["until"] == last_download and state.nights[0]["finished"]
    assert state.keyword_since("dog") == last_download  # the next night searches from there on
    assert state.open_night("incremental", last_download + DAY)["night"] == 2 and state.kept_before_night("dog") == 3

"""The world step, and the one bridge from production to the offline stand-in (:mod:`webvse_world`).

The step generates the offline default world under the data root, once, in two tasks: the clean
captioned set (what the keywords step reads) and the Flickr-like web corpus (what the crawl
searches), which the flow renders beside the keywords step. Each is deterministic from the seed
and skipped when it is already there for the same settings (a marker file per part, holding its
settings, is written last, so a crash mid-way regenerates that part). The bridge: the local
corpus served for a crawl (:func:`crawl_local`), its clock, and ``webvse flickr-server``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from storage.atomic import atomic_write_text
from storage.layout import DataRoot
from tasks.crawling.config import CrawlConfig
from tasks.crawling.crawler import run_crawl
from tasks.crawling.flickr_client import OFFLINE_KEY, Credentials
from tasks.orchestration import pipeline_task, root_of, step_logger
from tasks.pipeline_config import WorldConfig
from webvse_world.clean import CleanSizes, generate_clean_dataset
from webvse_world.flickr_server import CorpusError, Faults, FlickrServer
from webvse_world.mirflickr import MirflickrImport, import_mirflickr
from webvse_world.web import PHOTOS_FILE, WebSizes, advance_clock, generate_web_corpus, read_clock

__all__ = [
    "CleanSizes", "CorpusError", "Faults", "MirflickrImport", "WebSizes", "WorldSettings", "advance_clock",
    "generate_clean_world", "generate_web_world", "import_mirflickr", "serve_corpus",
]  # fmt: skip
SERVER_KEY_ENV = "WEBVSE_FLICKR_SERVER_KEY"

CLEAN_MARKER, CORPUS_MARKER = "clean.json", "corpus.json"  # in world/: the settings each part was generated with


@dataclass(frozen=True)
class WorldSettings:
    clean: CleanSizes = field(default_factory=CleanSizes)
    web: WebSizes = field(default_factory=WebSizes)
    seed: int = 0


@dataclass(frozen=True)
class WorldPart:
    path: Path  # the clean set's split file, or the corpus folder
    seconds: float
    reused: bool


def _folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def _generate_once(
    marker: Path, wanted: dict[str, Any], done: Path, result: Path, make: Callable[[], object], log: Callable[[str], None]
) -> WorldPart:
    """Run ``make`` unless ``marker`` holds the same settings and its last file ``done`` exists.
    The marker is written last, so a crash mid-way generates that part again."""
    text = json.dumps(wanted, sort_keys=True)
    if marker.is_file() and marker.read_text() == text and done.is_file():
        return WorldPart(result, 0.0, reused=True)
    started = time.perf_counter()
    make()
    atomic_write_text(marker, text)
    seconds = time.perf_counter() - started
    log(f"world: {marker.stem} done in {seconds:.1f}s, {_folder_mib(done.parent):.1f} MiB")
    return WorldPart(result, seconds, reused=False)


def generate_clean_world(
    root: DataRoot, settings: WorldSettings = WorldSettings(), log: Callable[[str], None] = print
) -> WorldPart:
    """The clean captioned dataset under ``root.world_clean_dir`` (reused if up to date): what the keywords step reads."""
    c = settings.clean

    def make() -> None:
        log(f"world: rendering {c.train + c.val + c.test} captioned images into {root.world_clean_dir}")
        generate_clean_dataset(root.world_clean_dir, c, settings.seed)

    wanted = {"clean": asdict(c), "seed": settings.seed}
    return _generate_once(root.world_dir / CLEAN_MARKER, wanted, root.world_dataset, root.world_dataset, make, log)


def generate_web_world(
    root: DataRoot, settings: WorldSettings = WorldSettings(), log: Callable[[str], None] = print
) -> WorldPart:
    """The Flickr-like web corpus under ``root.world_corpus_dir`` (reused if up to date): what the crawl searches."""
    corpus = root.world_corpus_dir

    def make() -> None:
        log(f"world: rendering the web corpus ({settings.web.photos_per_object} photos per object) into {corpus}")
        generate_web_corpus(corpus, settings.web, settings.seed)

    wanted = {"web": asdict(settings.web), "seed": settings.seed}
    return _generate_once(root.world_dir / CORPUS_MARKER, wanted, corpus / PHOTOS_FILE, corpus, make, log)


def serve_corpus(corpus: str | Path, port: int, faults: Faults = Faults(), access_log: bool = False) -> None:
    """Serve ``corpus`` on 127.0.0.1 until Ctrl-C; the accepted key comes from the environment."""
    keys = {os.environ.get(SERVER_KEY_ENV, OFFLINE_KEY)}
    server = FlickrServer(corpus, port=port, api_keys=keys, faults=faults, access_log=access_log)
    print(f"Flickr-compatible API at {server.rest_url} ({len(server.corpus.photos)} photos); Ctrl-C stops it", flush=True)
    print(f"it accepts the key in ${SERVER_KEY_ENV} (default: the offline demo key)", flush=True)
    # Ctrl-C and SIGTERM stop it cleanly, also when started in the background (where a shell
    # leaves SIGINT ignored and Python would never raise KeyboardInterrupt).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        print(f"stopped; served {server.stats['rest']} API calls and {server.stats['image']} images", flush=True)


def crawl_local(root: DataRoot, corpus: str, log: Callable[[str], None] = print, **settings: Any) -> dict[str, Any]:
    """Crawl the offline world: serve ``corpus`` on 127.0.0.1 for the duration of the crawl,
    on the corpus's clock (its simulated "now"; the real time for a corpus without one)."""
    with FlickrServer(corpus, api_keys={OFFLINE_KEY}) as server:
        now = server.corpus.now
        clock = time.time if now is None else (lambda: float(now))
        return run_crawl(
            root, CrawlConfig(api_url=server.rest_url, **settings), Credentials(OFFLINE_KEY, "unused"), log, clock=clock
        )


def corpus_clock(corpus: str | Path) -> float | None:
    """The local corpus's simulated "now" (None for a corpus without a clock: the real time)."""
    return read_clock(corpus)


def world_settings(settings: WorldConfig) -> WorldSettings:
    web = WebSizes(
        settings.photos_per_object, settings.owners, nights=settings.nights, uploads_per_night=settings.uploads_per_night
    )
    return WorldSettings(CleanSizes(settings.train, settings.val, settings.test), web, settings.seed)


@pipeline_task("world", ("tasks.steps.world", "webvse_world"), writes=lambda i: [root_of(i).world_dir / CLEAN_MARKER])
def world_step(root: str, settings: WorldConfig) -> dict[str, str]:
    """Generate (or reuse) the offline world's clean dataset; returns its split file."""
    part = generate_clean_world(DataRoot.resolve(root), world_settings(settings), log=step_logger())
    return {"karpathy": str(part.path)}


@pipeline_task("world-corpus", ("tasks.steps.world", "webvse_world"), writes=lambda i: [root_of(i).world_dir / CORPUS_MARKER])
def world_corpus_step(root: str, settings: WorldConfig) -> dict[str, str]:
    """Generate (or reuse) the offline world's web corpus; returns its folder. Part of the world
    step (``--steps world`` runs both); a task of its own so that it renders while the keywords
    step tags the captions, which need only the clean dataset."""
    part = generate_web_world(DataRoot.resolve(root), world_settings(settings), log=step_logger())
    return {"corpus": str(part.path)}

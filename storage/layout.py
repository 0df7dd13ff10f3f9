"""DataRoot: every path of the data root, named in one place.

Code never joins data-root paths by hand; it asks a :class:`DataRoot`. That keeps the
layout of ``../shared/DESIGN.md`` true in one file, and makes a relocation (another
disk, an object-store mount) a one-line change.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from storage.errors import InputError

DEFAULT_DATA_ROOT = "webvse-data"
DATA_ROOT_ENV = "WEBVSE_DATA_ROOT"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


STATE_DIR_ENV = "WEBVSE_STATE_DIR"


# File and folder names inside the data root that are not DataRoot properties (runs are
# folders the training step names; these are what every run, index and report folder holds).
CONFIG_FILE, VOCAB_FILE, METRICS_FILE = "config.json", "vocab.json", "metrics.parquet"  # runs/<run>/
EVALUATION_FILE = "evaluation.parquet"  # runs/<run>/: the evaluate step's table of each trained stage
INDEX_DIR = "index"  # runs/<run>/index/<collection>/: the index step's output
INDEX_ITEMS_FILE, INDEX_CAPTIONS_FILE = "items.parquet", "captions.parquet"
INDEX_MANIFEST_FILE, INDEX_IVF_FILE = "manifest.json", "ivf.faiss"
REPORT_DIR = "report"  # runs/report/: the comparison of the last evaluated runs
EXPERIMENT_DIR = "experiment"  # runs/experiment/: the paper's grid
VECTORS_FILE = "word_vectors.bin"  # vectors/
WORLD_DATASET_FILE = "dataset_world.json"  # in <data root>/world/clean/ (and any folder the world generator writes)


def user_state_dir() -> Path:
    """Per-user state shared by every data root of this machine's user (e.g. the hourly Flickr
    call budget of an API key, which Flickr counts per key, not per data root):
    ``$WEBVSE_STATE_DIR``, else ``$XDG_STATE_HOME/webvse``, else ``~/.local/state/webvse``."""
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "webvse"


def _checked_name(kind: str, name: str) -> str:
    """Refuse names that could escape the data root (``..``, slashes, empties)."""
    if not _SAFE_NAME.match(name) or name in {".", ".."}:
        raise InputError(f"{kind} {name!r} is not a safe folder name (letters, digits, '.', '_', '-')")
    return name


@dataclass(frozen=True)
class DataRoot:
    """The one folder holding everything a pipeline run makes.

    ``web_folder`` is the crawl's folder: ``web``, or ``web.fresh`` while a fresh crawl
    builds its replacement (see :meth:`fresh_crawl`).
    """

    root: Path
    web_folder: str = "web"

    @classmethod
    def resolve(cls, root: str | os.PathLike[str] | None = None) -> DataRoot:
        """``root`` if given, else ``$WEBVSE_DATA_ROOT``, else ``./webvse-data``."""
        chosen = root if root is not None else os.environ.get(DATA_ROOT_ENV, DEFAULT_DATA_ROOT)
        return cls(Path(chosen).expanduser().absolute())

    def ensure_writable(self) -> DataRoot:
        """Create the folder if needed and prove a file can be written there.

        Checked once before any step, so a read-only or misplaced root is one clear error
        instead of a step failing halfway (and being retried for nothing).
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-probe-"):
                pass
        except OSError as exc:
            raise InputError(
                f"data root {self.root} is not a writable folder ({exc.strerror or exc}); choose another with --data-root or ${DATA_ROOT_ENV}"
            ) from None
        return self

    # clean dataset -----------------------------------------------------------------
    @property
    def clean_dir(self) -> Path:
        return self.root / "clean"

    @property
    def clean_images(self) -> Path:
        return self.clean_dir / "images.parquet"

    @property
    def clean_captions(self) -> Path:
        return self.clean_dir / "captions.parquet"

    @property
    def keywords(self) -> Path:
        return self.root / "keywords.parquet"

    # web corpus --------------------------------------------------------------------
    @property
    def web_dir(self) -> Path:
        return self.root / self.web_folder

    def fresh_crawl(self) -> DataRoot:
        """The same root with the crawl in ``web.fresh/``: a fresh crawl's staging folder."""
        return DataRoot(self.root, "web.fresh")

    @property
    def replaced_web_dir(self) -> Path:
        """Where ``web/`` waits while a finished fresh crawl takes its place (deleted right after)."""
        return self.root / "web.replaced"

    @property
    def web_photos(self) -> Path:
        return self.web_dir / "photos.parquet"

    @property
    def crawl_lock(self) -> Path:
        """Held by the one crawl that may write ``web/`` at a time."""
        return self.web_dir / ".crawl.lock"

    @property
    def crawl_progress(self) -> Path:
        return self.web_dir / "crawl_progress.parquet"

    @property
    def crawl_nights(self) -> Path:
        """One row per crawl night: its upload-time bound and how many photos it added."""
        return self.web_dir / "crawl_nights.parquet"

    @property
    def web_images_dir(self) -> Path:
        return self.web_dir / "images"

    def web_image(self, sha256: str) -> Path:
        """Content-addressed location of a downloaded photo."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise InputError(f"not a sha256 hex digest: {sha256!r}")
        return self.web_images_dir / sha256[:2] / f"{sha256}.jpg"

    # the generated offline world ---------------------------------------------------
    @property
    def world_dir(self) -> Path:
        return self.root / "world"

    @property
    def world_clean_dir(self) -> Path:
        """Karpathy JSON + images of the generated captioned dataset."""
        return self.world_dir / "clean"

    @property
    def world_dataset(self) -> Path:
        """The generated dataset's Karpathy-format split file."""
        return self.world_clean_dir / WORLD_DATASET_FILE

    @property
    def world_corpus_dir(self) -> Path:
        """The generated Flickr corpus the local server serves."""
        return self.world_dir / "corpus"

    # features, vectors, runs -------------------------------------------------------
    def features_dir(self, model_id: str) -> Path:
        return self.root / "features" / _checked_name("model id", model_id)

    def feature_failures(self, model_id: str) -> Path:
        """Images the encoder could not decode, with the reason (``storage.tables.FEATURE_FAILURES``)."""
        return self.features_dir(model_id) / "failures.parquet"

    @property
    def vectors_dir(self) -> Path:
        return self.root / "vectors"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / _checked_name("run id", run_id)

    @property
    def in_use_file(self) -> Path:
        """The model in use (``webvse search``, ``re-evaluate``): set by promotion and rollback."""
        return self.runs_dir / "in_use.json"

    @property
    def models_history(self) -> Path:
        """Every promotion decision and rollback (``storage.tables.MODELS``)."""
        return self.runs_dir / "models.parquet"

    @property
    def cache_dir(self) -> Path:
        """Pipeline cache records (Prefect results: small summaries and paths)."""
        return self.root / "cache"

    @property
    def latest_runs_file(self) -> Path:
        """The runs the last evaluation compared (what ``re-evaluate`` evaluates again)."""
        return self.runs_dir / "latest.json"

    def latest_run(self) -> Path | None:
        """The most recently modified run folder that holds a config, if any."""
        if not self.runs_dir.is_dir():
            return None
        runs = [p for p in self.runs_dir.iterdir() if (p / "config.json").is_file()]
        return max(runs, key=lambda p: (p / "config.json").stat().st_mtime, default=None)

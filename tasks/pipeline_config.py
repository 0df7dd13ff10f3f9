"""The pipeline's one typed configuration: the flow's parameters and ``webvse run --config``.

Pydantic models, so the Prefect UI renders a form for the flow, a YAML file is checked
before anything runs, and a bad value is an error that names the field
(``train.epochs: Input should be greater than or equal to 1``). Unknown keys are
errors too: a typo must not silently fall back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from storage.errors import InputError, MissingInputError
from storage.layout import DataRoot
from tasks.crawling.config import CrawlConfig, CrawlMode, EnglishRule
from tasks.crawling.flickr_client import RetryPolicy
from tasks.imaging.settings import FeatureSettings
from tasks.serving.collection import COLLECTIONS
from tasks.serving.index_settings import Approximate, IndexSettings
from tasks.text.backends import DEFAULT_BACKEND, DEFAULT_SPACY_MODEL
from webvse_model.settings import (
    ENCODER_SHAPES,
    LOSS_VARIANTS,
    PROTOCOLS,
    STAGE2_EPOCHS,
    STAGE2_LR_FACTOR,
    ConfigError,
    CurriculumSchedule,
    LossVariant,
    ModelConfig,
    Precision,
    StageConfig,
)

Step = Literal["world", "keywords", "crawl", "features", "vectors", "stage1", "stage2", "evaluate", "promote", "index"]
STEPS: tuple[Step, ...] = (
    "world",
    "keywords",
    "crawl",
    "features",
    "vectors",
    "stage1",
    "stage2",
    "evaluate",
    "promote",
    "index",
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorldConfig(Section):
    """The generated offline world (used when ``dataset.karpathy`` is empty)."""

    seed: int = Field(0, description="seed of the generated images, captions and corpus")
    train: int = Field(3000, ge=10, description="captioned images in the train split")
    val: int = Field(250, ge=5, description="captioned images in the val split")
    test: int = Field(1000, ge=5, description="captioned images in the test split")
    photos_per_object: int = Field(120, ge=1, description="Flickr corpus photos per object class")
    owners: int = Field(400, ge=1, description="distinct uploaders; the 5-per-owner rule caps the kept web data by this")
    nights: int = Field(
        3, ge=0, description="days of future uploads beyond the corpus clock ('webvse world --next-night' reveals one)"
    )
    uploads_per_night: int = Field(100, ge=1)


class DatasetConfig(Section):
    """The clean captioned dataset: a Karpathy split file, or the generated world."""

    karpathy: str | None = Field(None, description="Karpathy split JSON (MSCOCO/Flickr30K); empty = the generated world")
    image_root: str | None = Field(None, description="folder the JSON's filepath/filename are relative to")
    captions_per_image: int = Field(5, ge=1)


class KeywordsConfig(Section):
    backend: Literal["spacy", "nltk"] = Field(DEFAULT_BACKEND, description="POS tags and lemmas (nltk needs NLTK data)")
    spacy_model: str = Field(DEFAULT_SPACY_MODEL, description="spaCy pipeline package")
    top_n: int = Field(1000, ge=1, description="keywords kept, most frequent first (the paper: 1,000)")
    processes: int = Field(1, ge=1, description="spaCy worker processes")


class CrawlSettings(Section):
    """Where and how to crawl. Empty ``api_url`` = serve the offline corpus on 127.0.0.1."""

    api_url: str | None = Field(None, description="Flickr REST endpoint; empty = the local corpus below")
    corpus: str | None = Field(None, description="corpus folder to serve locally; empty = the generated world's")
    mode: CrawlMode = Field(
        CrawlConfig.mode,
        description="incremental: continue the crawl with the photos uploaded since each keyword's last crawl; "
        "fresh: crawl again from nothing into a new folder that replaces web/ once it succeeds",
    )
    per_keyword: int = Field(CrawlConfig.per_keyword, ge=1, description="photos kept per keyword by the first crawl")
    new_per_keyword: int = Field(
        CrawlConfig.new_per_keyword, ge=1, description="at most this many new photos per keyword per later (incremental) crawl"
    )
    per_page: int = Field(CrawlConfig.per_page, ge=1, le=500, description="results per search call (Flickr allows 500)")
    max_keywords: int | None = Field(None, ge=1, description="crawl only the first N keywords; empty = all")
    calls_per_hour: int = Field(CrawlConfig.calls_per_hour, ge=1, description="API calls per key per hour (Flickr allows 3,600)")
    download_workers: int = Field(CrawlConfig.download_workers, ge=1, description="parallel image downloads")
    english: EnglishRule = Field(
        CrawlConfig.english,
        description="what makes a tag English: a common English word (wordfreq) or a word of the clean captions",
    )
    request_attempts: int = Field(
        RetryPolicy.attempts, ge=1, description="attempts per API call / download before the task fails"
    )
    key_block: str = Field("flickr-api-key", description="Prefect Secret block with the API key (else $FLICKR_API_KEY)")
    secret_block: str = Field("flickr-api-secret", description="Prefect Secret block with the API secret")
    rate_limit: str | None = Field(None, description="Prefect global concurrency limit to take one slot from per API call")


class FeaturesConfig(Section):
    encoder: str = Field(FeatureSettings.encoder, description=f"pretrained CNN, one of {', '.join(sorted(ENCODER_SHAPES))}")
    weights_path: str | None = Field(
        FeatureSettings.weights_path, description="local weights file (resnet152/vgg19 without internet)"
    )
    batch_size: int | None = Field(
        FeatureSettings.batch_size, ge=1, description="images per CNN forward; empty = 8 on the CPU (cache-sized), 64 on CUDA"
    )
    workers: int | None = Field(
        FeatureSettings.workers,
        ge=0,
        description="image decode threads; empty = none on the CPU (the forward uses every core), 4 on CUDA",
    )
    parallel_shards: int = Field(1, ge=1, description="split the images over this many tasks (e.g. one per Dask worker)")
    on_bad_image: Literal["skip", "fail"] = Field(
        FeatureSettings.on_bad_image,
        description="an image that cannot be decoded: skip it (recorded in failures.parquet, training uses the rest) or fail",
    )

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        if value not in ENCODER_SHAPES:
            raise InputError(f"must be one of {sorted(ENCODER_SHAPES)}, got {value!r}")
        return value


class VectorsConfig(Section):
    pretrained: str | None = Field(None, description="word2vec .bin/.txt or gensim .kv; empty = train Word2Vec")
    dim: int = Field(300, ge=2, description="word vector size when training Word2Vec")
    seed: int = Field(0, description="Word2Vec seed")
    web_tags: bool = Field(True, description="also train on the crawled photos' English tags")
    extra_captions: str | None = Field(
        None, description="an image,caption file of caption-only images (e.g. Flickr8k all_captions.txt)"
    )


class TrainConfig(Section):
    """Stage I (and the baseline) and Stage II. The defaults are the paper's, declared once in
    :mod:`webvse_model.settings` (``StageConfig``, ``CurriculumSchedule``, ``ModelConfig``) and read from
    there, so this section, the command-line flags and a run's ``config.json`` cannot disagree."""

    loss: LossVariant = Field(StageConfig.loss, description="sum of the negatives (vse) or the hardest one (vse++)")
    margin: float = Field(StageConfig.margin, ge=0, description="hinge margin of the ranking losses")
    lambda_tag: float = Field(
        StageConfig.lambda_tag, ge=0, description="weight of the image-tag loss L_IT in Stage I (0: the VSE baseline)"
    )
    baseline: bool = Field(True, description="also train the lambda_tag = 0 baseline for comparison (the flow)")
    epochs: int = Field(StageConfig.epochs, ge=1, description="Stage I epochs")
    warmup_epochs: int = Field(StageConfig.warmup_epochs, ge=0, description="with vse++: first epochs on the sum of negatives")
    lr: float = Field(StageConfig.lr, gt=0, description="Stage I learning rate (Adam)")
    lr_decay_every: int = Field(StageConfig.lr_decay_every, ge=1, description="epochs between learning-rate decays")
    lr_decay: float = Field(StageConfig.lr_decay, gt=0, le=1, description="factor of each learning-rate decay")
    batch_size: int = Field(StageConfig.batch_size, ge=2)
    grad_clip: float = Field(StageConfig.grad_clip, gt=0, description="gradient norm clip")
    stage2_epochs: int = Field(STAGE2_EPOCHS, ge=0, description="Stage II epochs on the web image-tag pairs (0: no Stage II)")
    stage2_lr_factor: float = Field(STAGE2_LR_FACTOR, gt=0, le=1, description="Stage II learning rate = Stage I's x this")
    curriculum: bool = Field(CurriculumSchedule.enabled, description="Stage II draws frequent keywords' photos first")
    curriculum_start: float = Field(
        CurriculumSchedule.start_fraction, gt=0, le=1, description="share of the keywords in the first Stage II epoch"
    )
    curriculum_full_at_epoch: int = Field(
        CurriculumSchedule.full_at_epoch, ge=0, description="Stage II epoch from which every keyword is drawn"
    )
    web_fraction: float = Field(
        1.0, gt=0, le=1, description="share of the kept web photos Stage II trains on (nested subsets by image hash)"
    )
    embed_dim: int = Field(ModelConfig.embed_dim, ge=2, description="D, the joint space")
    hidden_dim: int = Field(ModelConfig.hidden_dim, ge=2, description="hidden layer of the image and tag branches")
    word_dim: int = Field(ModelConfig.word_dim, ge=2, description="word embedding of the sentence branch")
    gru_hidden: int = Field(ModelConfig.gru_hidden, ge=2, description="GRU state of the sentence branch")
    seed: int = Field(StageConfig.seed, description="weights' initialisation and batch order")


class EvaluateConfig(Section):
    split: str | None = Field(None, description="split to evaluate (default: test)")
    protocol: Literal[PROTOCOLS] = "all"  # type: ignore[valid-type]
    examples: int = Field(5, ge=0, description="retrieval examples in the markdown artifact")


class PromoteConfig(Section):
    """Which model is in use (``webvse search``, ``re-evaluate``): a new one replaces it only when better."""

    margin: float = Field(0.0, description="a new model must beat the validation rsum of the model in use by more than this")


class IndexConfig(Section):
    """The index step: a trained run's embeddings of a collection, for ``webvse serve`` and ``webvse search``."""

    run: str | None = Field(None, description="run folder to index (default: the model in use, else the run just trained)")
    collection: Literal[COLLECTIONS] = Field(  # type: ignore[valid-type]
        IndexSettings.collection, description="test split, all clean images, the crawled web photos, or a folder of your photos"
    )
    folder: str | None = Field(
        IndexSettings.folder, description="with collection folder: the photos to index (their features are computed)"
    )
    approximate: Approximate = Field(
        IndexSettings.approximate, description="auto: faiss IVF from approximate_from items on; exact or approximate force it"
    )
    approximate_from: int = Field(
        IndexSettings.approximate_from, ge=1, description="collection size from which auto searches approximately"
    )
    nprobe: int = Field(
        IndexSettings.nprobe, ge=1, description="IVF clusters scanned per query (recall@10 against exact is measured at build)"
    )

    def settings(self) -> IndexSettings:
        return IndexSettings(self.collection, self.folder, self.approximate, self.approximate_from, self.nprobe)


class ExperimentConfig(Section):
    """The grid of ``webvse experiment``: losses x {baseline, Stage I, Stage II +- curriculum} x seeds."""

    losses: list[LossVariant] = Field(default_factory=lambda: list(LOSS_VARIANTS), min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    web_fractions: list[float] = Field(
        default_factory=list, description="extra Stage II (curriculum) cells on these shares of the web photos, e.g. [0.25, 0.5]"
    )
    web_fraction_loss: Literal["vse", "vse++"] = Field("vse++", description="the loss of the web-fraction cells")

    @field_validator("web_fractions")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        if any(not 0 < f < 1 for f in values):
            raise InputError(f"each web fraction must lie in (0, 1) (1.0 is the grid's own Stage II), got {values}")
        return values

    @model_validator(mode="after")
    def _fraction_loss_in_grid(self) -> ExperimentConfig:
        if self.web_fractions and self.web_fraction_loss not in self.losses:
            raise InputError(f"web_fraction_loss {self.web_fraction_loss!r} is not among the grid's losses {self.losses}")
        return self


class RetryConfig(Section):
    """Task-level retries (on top of the per-request retries inside the crawler)."""

    crawl: int = Field(3, ge=0)
    crawl_delay_seconds: float = Field(30.0, ge=0, description="first retry delay; doubles per retry, with jitter")
    other: int = Field(1, ge=0)
    other_delay_seconds: float = Field(10.0, ge=0)


class PipelineConfig(Section):
    data_root: str = Field("webvse-data", description="folder holding every table, file, cache and run")
    device: str = Field("auto", description="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    precision: Precision = Field(
        "auto",
        description="CNN forward and training steps: bf16 autocast where the hardware has it natively (auto), or force fp32 / bf16",
    )
    world: WorldConfig = WorldConfig()
    dataset: DatasetConfig = DatasetConfig()
    keywords: KeywordsConfig = KeywordsConfig()
    crawl: CrawlSettings = CrawlSettings()
    features: FeaturesConfig = FeaturesConfig()
    vectors: VectorsConfig = VectorsConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    promote: PromoteConfig = PromoteConfig()
    index: IndexConfig = IndexConfig()
    experiment: ExperimentConfig = ExperimentConfig()
    retries: RetryConfig = RetryConfig()

    @property
    def uses_world(self) -> bool:
        """The generated world is needed: as the clean dataset, or as the corpus of a local crawl."""
        return not self.dataset.karpathy or (not self.crawl.api_url and not self.crawl.corpus)

    @property
    def root(self) -> DataRoot:
        return DataRoot.resolve(self.data_root)

    def karpathy_path(self) -> str:
        """The clean dataset's split file: the configured one or the generated world's."""
        return self.dataset.karpathy or str(self.root.world_dataset)

    def corpus_path(self) -> str | None:
        """The corpus to serve locally for the crawl, or None when crawling ``crawl.api_url``."""
        if self.crawl.api_url:
            return None
        return self.crawl.corpus or str(self.root.world_corpus_dir)


# The sections of the configuration each data step reads: the flags of its command
# (`webvse crawl --per-keyword 50` is `webvse run --steps crawl --set crawl.per_keyword=50`).
STEP_SECTIONS: dict[Step, dict[str, type[Section]]] = {
    "world": {"world": WorldConfig},
    "keywords": {"dataset": DatasetConfig, "keywords": KeywordsConfig},
    "crawl": {"crawl": CrawlSettings},
    "features": {"features": FeaturesConfig},
    "vectors": {"vectors": VectorsConfig},
    "index": {"index": IndexConfig},
}


def demo_config(data_root: str = "webvse-data") -> PipelineConfig:
    """The offline demo: the default world, smaller model and fewer epochs (2 CPU cores, < 15 min).

    Two warm-up epochs on the sum of negatives for both Stage I runs: from scratch, 8 epochs of
    VSE++ collapsed the baseline (loss stuck at 2 x 128 x 0.2 = 51.2, val rsum 255), which made
    the webly run look 80 rsum better than it is; warmed up, the baseline reaches val rsum 503.
    """
    train = TrainConfig(
        epochs=8, lr_decay_every=6, stage2_epochs=4, warmup_epochs=2, embed_dim=256, hidden_dim=512, word_dim=100, gru_hidden=256
    )
    return PipelineConfig(data_root=data_root, train=train, vectors=VectorsConfig(dim=100))


def _explain(exc: ValidationError, where: str) -> ConfigError:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
    return ConfigError(f"{where}: {problems}")


def config_from_dict(values: dict[str, Any], where: str = "configuration") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(values)
    except ValidationError as exc:
        raise _explain(exc, where) from None


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """A YAML file (or the defaults) with dotted overrides such as ``{"train.epochs": 2}``."""
    values: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise MissingInputError(f"configuration file {path} does not exist (examples: configs/*.yaml)")
        text = Path(path).read_text(encoding="utf-8")
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return config_from_dict(merge_dotted(values, overrides or {}), str(path or "configuration"))


def merge_dotted(values: dict[str, Any], dotted: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``{"train.epochs": 2}``-style overrides applied (in place)."""
    for key, value in dotted.items():
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return values

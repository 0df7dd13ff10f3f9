"""The features step: CNN features of the clean images and the kept web photos (:mod:`tasks.imaging.features`),
in one task or, with ``features.parallel_shards``, one task per chunk.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from storage.layout import DataRoot
from storage.tables import feature_schema, read_shards
from tasks.imaging.features import compute_features, features_id, images_to_encode
from tasks.imaging.settings import FeatureSettings
from tasks.orchestration import pipeline_task, root_of, step_logger
from tasks.pipeline_config import FeaturesConfig
from webvse_model.cnn import encoder_spec


def _options(settings: FeaturesConfig, device: str, precision: str) -> FeatureSettings:
    return FeatureSettings(
        settings.encoder, settings.weights_path, settings.batch_size, settings.workers,
        device=device, on_bad_image=settings.on_bad_image, precision=precision,
    )  # fmt: skip


_FEATURES_MODULES = ("tasks.steps.features", "tasks.imaging", "webvse_model.cnn", "webvse_model.precision")


@pipeline_task(
    "features",
    _FEATURES_MODULES,
    reads=lambda i: [root_of(i).clean_images, root_of(i).web_photos],
    writes=lambda i: [root_of(i).features_dir(features_id(i["settings"].encoder, i["device"], i["precision"]))],
)
def features_step(root: str, settings: FeaturesConfig, device: str = "auto", precision: str = "auto") -> dict[str, Any]:
    """CNN features of the clean images and the kept web photos; returns counts and the features id."""
    data_root = DataRoot.resolve(root)
    return compute_features(data_root, images_to_encode(data_root), _options(settings, device, precision), step_logger())


@task(name="features-todo", cache_policy=NO_CACHE)
def feature_chunks_step(
    root: str, settings: FeaturesConfig, parts: int, device: str = "auto", precision: str = "auto"
) -> list[list[list[str]]]:
    """The images without features, as ``parts`` chunks of ``[sha256, path]`` for parallel shard tasks."""
    data_root = DataRoot.resolve(root)
    spec = encoder_spec(settings.encoder)
    images = images_to_encode(data_root)
    folder = data_root.features_dir(features_id(settings.encoder, device, precision))
    done = set(read_shards(folder, feature_schema(spec.dim)).column("sha256").to_pylist())
    todo = images[~images["sha256"].isin(done)][["sha256", "path"]].values.tolist()
    return [chunk for chunk in (todo[i::parts] for i in range(parts)) if chunk]


@pipeline_task("features-shard", _FEATURES_MODULES)
def features_shard_step(
    root: str, images: list[list[str]], settings: FeaturesConfig, device: str = "auto", precision: str = "auto"
) -> dict[str, Any]:
    """Encode one chunk of images (one task per worker with a Dask task runner); writes its own shards."""
    frame = pd.DataFrame(images, columns=["sha256", "path"])
    return compute_features(DataRoot.resolve(root), frame, _options(settings, device, precision), step_logger())

"""Parquet tables with declared schemas: validated reads, atomic writes and appends.

Every table the pipeline shares is declared here once, as a pyarrow schema. Writers
cast to it (so a float64 column never silently becomes the contract), readers check
it (so a stale or foreign file fails with its path and the offending columns, not a
KeyError three modules later). Writes are atomic (see :mod:`storage.atomic`).
Large, growing tables (features) are folders of shards: an append is a new shard file,
so a crash loses at most the shard in flight and never corrupts the ones before it.
"""

from __future__ import annotations

import fcntl
import io
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from storage.atomic import atomic_write, atomic_write_bytes
from storage.errors import InputError


class TableError(InputError):
    """A table file is missing, unreadable or does not match its schema."""


@dataclass(frozen=True)
class TableSchema:
    """A named Parquet schema; ``name`` appears in every error about it.

    ``added`` names columns added to a table after files of it were written, with the value
    an older file's rows read as (``{"night": 1}``: a crawl made before crawl nights were
    recorded was its root's first night), so a table grows without stranding its old files.
    """

    name: str
    schema: pa.Schema
    added: tuple[tuple[str, object], ...] = ()

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)


CLEAN_IMAGES = TableSchema(
    "clean/images",
    pa.schema([("image_id", pa.string()), ("split", pa.string()), ("path", pa.string()), ("sha256", pa.string())]),
)
CLEAN_CAPTIONS = TableSchema(
    "clean/captions",
    pa.schema(
        [
            ("caption_id", pa.string()),
            ("image_id", pa.string()),
            ("split", pa.string()),
            ("text", pa.string()),
            ("tokens", pa.list_(pa.string())),
            ("dummy_tags", pa.list_(pa.string())),
        ]
    ),
)
KEYWORDS = TableSchema(
    "keywords",
    pa.schema([("keyword", pa.string()), ("count", pa.int64()), ("rank", pa.int32()), ("variants", pa.list_(pa.string()))]),
)
FEATURE_FAILURES = TableSchema(  # features/<encoder id>/failures.parquet: images that could not be decoded
    "features/failures", pa.schema([("sha256", pa.string()), ("path", pa.string()), ("reason", pa.string())])
)
RUN_METRICS = TableSchema(
    "runs/metrics",
    pa.schema(
        [
            ("stage", pa.string()),
            ("epoch", pa.int32()),
            ("train_loss", pa.float64()),
            ("lr", pa.float64()),
            ("seconds", pa.float64()),
            ("rsum", pa.float64()),
            ("i2t_r1", pa.float64()),
            ("i2t_r5", pa.float64()),
            ("i2t_r10", pa.float64()),
            ("i2t_medr", pa.float64()),
            ("i2t_meanr", pa.float64()),
            ("t2i_r1", pa.float64()),
            ("t2i_r5", pa.float64()),
            ("t2i_r10", pa.float64()),
            ("t2i_medr", pa.float64()),
            ("t2i_meanr", pa.float64()),
        ]
    ),
)


def feature_schema(dim: int) -> TableSchema:
    """Feature shards: one row per image content hash, a fixed-size float32 vector."""
    if dim <= 0:
        raise InputError(f"feature dimension must be positive, got {dim}")
    return TableSchema(
        f"features[{dim}]",
        pa.schema([("sha256", pa.string()), ("feature", pa.list_(pa.float32(), dim))]),
    )


def index_items_schema(dim: int) -> TableSchema:
    """``runs/<run>/index/<collection>/items.parquet``: what a search returns, with its joint-space vector."""
    return TableSchema(
        f"index/items[{dim}]",
        pa.schema(
            [
                ("sha256", pa.string()),
                ("path", pa.string()),
                ("split", pa.string()),
                ("source", pa.string()),
                ("labels", pa.list_(pa.string())),
                ("embedding", pa.list_(pa.float32(), dim)),
            ]
        ),  # fmt: skip
    )


def index_captions_schema(dim: int) -> TableSchema:
    """``runs/<run>/index/<collection>/captions.parquet``: the caption bank an image is described from."""
    return TableSchema(
        f"index/captions[{dim}]",
        pa.schema(
            [
                ("caption_id", pa.string()),
                ("image_sha256", pa.string()),
                ("split", pa.string()),
                ("text", pa.string()),
                ("embedding", pa.list_(pa.float32(), dim)),
            ]
        ),  # fmt: skip
    )


def vectors_matrix(table: pa.Table, column: str, dim: int) -> np.ndarray:
    """A fixed-size-list float32 column as a contiguous ``[rows, dim]`` array."""
    values = table.column(column).combine_chunks().values.to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values.reshape(len(table), dim), dtype=np.float32)


def _to_arrow(frame: pd.DataFrame | pa.Table, spec: TableSchema, where: Path) -> pa.Table:
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    for column, value in spec.added:
        if column not in table.column_names:
            table = table.append_column(column, pa.array([value] * table.num_rows, spec.schema.field(column).type))
    missing = [c for c in spec.columns if c not in table.column_names]
    if missing:
        raise TableError(f"{spec.name} for {where}: missing columns {missing}")
    try:
        return table.select(spec.columns).cast(spec.schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise TableError(f"{spec.name} for {where}: values do not fit the schema: {exc}") from exc


def _serialise(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_table(path: str | Path, frame: pd.DataFrame | pa.Table, spec: TableSchema) -> Path:
    """Validate ``frame`` against ``spec`` and replace ``path`` atomically."""
    target = Path(path)
    table = _to_arrow(frame, spec, target)
    with atomic_write(target) as handle:
        pq.write_table(table, handle, compression="zstd")
    return target


def read_arrow(path: str | Path, spec: TableSchema) -> pa.Table:
    """Read ``path`` and check it has ``spec``'s columns with castable types."""
    source = Path(path)
    if not source.is_file():
        raise TableError(f"{spec.name}: no table at {source}")
    try:
        # one open file: reading by path lets pyarrow stat and open separately, and a
        # concurrent atomic replace in between mixes the old file's size with the new bytes
        with open(source, "rb") as handle:
            table = pq.read_table(handle)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TableError(f"{spec.name}: {source} is not a readable Parquet file: {exc}") from exc
    return _to_arrow(table, spec, source)


def read_table(path: str | Path, spec: TableSchema) -> pd.DataFrame:
    """Read and validate a table as a DataFrame."""
    return read_arrow(path, spec).to_pandas()


@contextmanager
def _exclusive(target: Path) -> Iterator[None]:
    """An advisory lock beside ``target``: concurrent appenders (parallel feature shards) take turns."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def append_rows(path: str | Path, frame: pd.DataFrame, spec: TableSchema) -> Path:
    """Append rows to a small table by an atomic rewrite (old rows are never at risk);
    the read-modify-write holds a lock, so parallel appenders lose no rows."""
    target = Path(path)
    new = _to_arrow(frame, spec, target)
    with _exclusive(target):
        combined = pa.concat_tables([read_arrow(target, spec), new]) if target.exists() else new
        atomic_write_bytes(target, _serialise(combined))
    return target


def append_shard(folder: str | Path, frame: pd.DataFrame | pa.Table, spec: TableSchema) -> Path:
    """Write rows as a new shard in ``folder``; earlier shards are never rewritten."""
    directory = Path(folder)
    table = _to_arrow(frame, spec, directory)
    target = directory / f"part-{uuid.uuid4().hex}.parquet"
    atomic_write_bytes(target, _serialise(table))
    return target


def read_shards(folder: str | Path, spec: TableSchema) -> pa.Table:
    """All shards of ``folder`` as one table (empty with the schema if none)."""
    directory = Path(folder)
    shards = sorted(directory.glob("part-*.parquet")) if directory.is_dir() else []
    if not shards:
        return spec.schema.empty_table()
    return pa.concat_tables([read_arrow(shard, spec) for shard in shards])


def features_matrix(table: pa.Table, dim: int) -> np.ndarray:
    """The ``feature`` column of a feature table as a contiguous ``[rows, dim]`` float32 array."""
    return vectors_matrix(table, "feature", dim)


RUN_EVALUATION = TableSchema(
    "runs/evaluation",
    pa.schema(
        [("stage", pa.string()), ("split", pa.string()), ("protocol", pa.string())]
        + [(c, pa.float64()) for c in RUN_METRICS.columns if c.startswith(("i2t_", "t2i_")) or c == "rsum"]
    ),
)


def feature_dim(folder: str | Path) -> int:
    """The vector size of a feature-shard folder, read from its first shard's schema."""
    directory = Path(folder)
    shards = sorted(directory.glob("part-*.parquet")) if directory.is_dir() else []
    if not shards:
        raise TableError(f"no feature shards in {directory}")
    field_type = pq.read_schema(shards[0]).field("feature").type
    if not isinstance(field_type, pa.FixedSizeListType):
        raise TableError(f"{shards[0]}: 'feature' is {field_type}, expected a fixed-size list of float32")
    return int(field_type.list_size)


@dataclass(frozen=True)
class FeatureRows:
    """A features folder read whole: the row of each image (by sha256) in ``matrix``."""

    row_of: dict[str, int]
    matrix: np.ndarray  # [rows, dim] float32

    def rows(self, sha256: Iterable[str]) -> np.ndarray:
        """The features of these images, in this order (each must have a row: filter with ``row_of``)."""
        return self.matrix[[self.row_of[sha] for sha in sha256]]


def read_features(folder: str | Path) -> FeatureRows:
    """Every feature row of a shard folder, keyed by image sha256: what training, evaluation and
    the index look their images' features up in."""
    dim = feature_dim(folder)
    table = read_shards(folder, feature_schema(dim))
    return FeatureRows({sha: i for i, sha in enumerate(table.column("sha256").to_pylist())}, features_matrix(table, dim))


FLICKR_CORPUS = TableSchema(
    "flickr corpus",
    pa.schema(
        [
            ("photo_id", pa.string()),
            ("owner", pa.string()),
            ("ownername", pa.string()),
            ("title", pa.string()),
            ("tags", pa.list_(pa.string())),
            ("license", pa.int32()),
            ("date_upload", pa.int64()),
            ("server", pa.string()),
            ("secret", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("file", pa.string()),
            ("depicts", pa.string()),
            ("duplicate_of", pa.string()),
        ]
    ),
)


WEB_PHOTOS = TableSchema(
    "web/photos",
    pa.schema(
        [
            ("photo_id", pa.string()),
            ("owner", pa.string()),
            ("keyword", pa.string()),
            ("keyword_rank", pa.int32()),
            ("keywords", pa.list_(pa.string())),
            ("tags", pa.list_(pa.string())),
            ("english_tags", pa.list_(pa.string())),
            ("title", pa.string()),
            ("license", pa.int32()),
            ("url", pa.string()),
            ("path", pa.string()),
            ("sha256", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("status", pa.string()),
            ("fetched_at", pa.string()),
            ("night", pa.int32()),  # the crawl night that decided the photo (1 = the first crawl)
        ]
    ),
    added=(("night", 1),),
)
CRAWL_NIGHTS = TableSchema(
    "web/crawl_nights",
    pa.schema(
        [
            ("night", pa.int32()),
            ("mode", pa.string()),  # incremental | fresh
            ("until", pa.int64()),  # the upload-time bound of every search of the night (the clock when it began)
            ("started_at", pa.string()),
            ("finished", pa.bool_()),
            ("new_kept", pa.int64()),
            ("kept_total", pa.int64()),
            ("api_calls", pa.int64()),
        ]
    ),
)
MODELS = TableSchema(
    "runs/models",
    pa.schema(
        [
            ("decided_at", pa.string()),
            ("night", pa.string()),
            ("candidate", pa.string()),  # run folders, relative to runs/
            ("candidate_val_rsum", pa.float64()),
            ("in_use", pa.string()),  # the model in use before the decision ("" = none)
            ("in_use_val_rsum", pa.float64()),
            ("margin", pa.float64()),
            ("promoted", pa.bool_()),
            ("reason", pa.string()),
            ("test_rsum", pa.float64()),
            ("web_photos", pa.int64()),
            ("new_photos", pa.int64()),
        ]
    ),
)
CRAWL_PROGRESS = TableSchema(
    "web/crawl_progress",
    pa.schema(
        [
            ("keyword", pa.string()),
            ("window_start", pa.int64()),
            ("window_end", pa.int64()),
            ("pages_done", pa.int32()),
            ("done", pa.bool_()),
            ("split", pa.bool_()),
            ("api_calls", pa.int64()),
        ]
    ),
)

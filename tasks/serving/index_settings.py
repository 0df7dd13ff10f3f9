"""What the index step builds, declared once: read by the ``index`` section of the
pipeline configuration (its flags, schema and help) and by the builder itself.

No heavy imports here, so the configuration can read these defaults cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Approximate = Literal["auto", "exact", "approximate"]


@dataclass(frozen=True)
class IndexSettings:
    """Which collection to index, and how to search it."""

    collection: str = "test"  # test | clean | web | folder
    folder: str | None = None  # with collection "folder": the user's photos
    approximate: Approximate = "auto"  # auto: faiss IVF from `approximate_from` items on, exact below
    approximate_from: int = 100_000  # exact: 29 ms p50 through the API at 100K x 1,024, 155 ms at 1M (IVF: 14 / 21 ms)
    nprobe: int = 32  # IVF clusters scanned per query: recall against speed (recall@10 is measured at build)
    recall_queries: int = 200  # sample queries for the measured recall@10 of an approximate index

    def uses_ivf(self, items: int) -> bool:
        return self.approximate == "approximate" or (self.approximate == "auto" and items >= self.approximate_from)

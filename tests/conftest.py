"""Shared fixtures: small synthetic worlds written in the real on-disk formats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from webvse_model.datasets.synthetic import SyntheticSizes, generate_synthetic_precomp

torch.set_num_threads(2)

TINY = SyntheticSizes(train=600, val=40, test=40, web=400, feature_dim=64, tag_dim=16, noise=0.1)


@pytest.fixture(scope="session")
def tiny_precomp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, well separated synthetic precomp folder (train/dev/test + web pairs)."""
    return generate_synthetic_precomp(tmp_path_factory.mktemp("precomp"), TINY, seed=3)

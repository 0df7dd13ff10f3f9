"""bf16 where the hardware has it: the rule, the features' cache key, and features that stay close to fp32."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from storage.checkpoints import sha256_file
from storage.layout import DataRoot
from storage.tables import feature_schema, read_shards
from tasks.imaging.features import compute_features
from tasks.imaging.settings import FeatureSettings
from tasks.pipeline_config import load_config
from webvse_model.precision import cpu_flags, cpu_has_native_bf16, use_bf16

FLICKR8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k-1k"
CPUINFO = "processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: fpu sse2 avx2 {extra}\nbogomips\t: 4000\n\nprocessor\t: 1\n"


@pytest.mark.parametrize(
    ("extra", "native"),
    [
        ("avx512f avx512_bf16 avx512_vnni", True),
        ("amx_bf16 amx_tile amx_int8 avx512f", True),
        ("avx512f avx512bw", False),
        ("", False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, extra: str, native: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(vendor="AuthenticAMD", extra=extra))
    assert cpu_has_native_bf16(str(cpuinfo)) is native
    assert ("avx2" in cpu_flags(cpuinfo.read_text())) and not cpu_has_native_bf16(
        str(tmp_path / "absent")
    )  # unknown: never assumed


def test_forced_settings_win_and_auto_follows_the_hardware() -> None:
    cpu = torch.device("cpu")
    assert use_bf16("fp32", cpu) is False and use_bf16("bf16", cpu) is True
    assert use_bf16("auto", cpu) is cpu_has_native_bf16()
    with pytest.raises(ValueError, match="precision must be one of"):
        use_bf16("fp16", cpu)
    with pytest.raises(ValueError, match="precision"):
        load_config(None, {"precision": "half"})


def test_bf16_features_are_another_cache_entry_and_stay_close_to_fp32(tmp_path: Path) -> None:
    if not (FLICKR8K / "captions.txt").is_file():
        pytest.skip(f"{FLICKR8K} is not present (the shared Flickr8k subset)")
    with open(FLICKR8K / "captions.txt", newline="", encoding="utf-8") as handle:
        names = list(dict.fromkeys(row["image"] for row in csv.DictReader(handle)))[:12]
    paths = [FLICKR8K / "images" / name for name in names]
    frame = pd.DataFrame({"sha256": [sha256_file(p) for p in paths], "path": [str(p) for p in paths]})
    root = DataRoot.resolve(tmp_path / "root")
    quiet = dict(log=lambda message: None)
    fp32 = compute_features(root, frame, FeatureSettings(batch_size=6, workers=0, device="cpu", precision="fp32"), **quiet)
    bf16 = compute_features(root, frame, FeatureSettings(batch_size=6, workers=0, device="cpu", precision="bf16"), **quiet)
    # the fp32 rows do not serve a bf16 request: another folder, computed, never mixed
    assert bf16["encoder_id"] == fp32["encoder_id"] + "-bf16" and (fp32["computed"], bf16["computed"]) == (12, 12)

    def rows(encoder_id: str) -> np.ndarray:
        table = read_shards(root.features_dir(encoder_id), feature_schema(1280)).to_pandas().set_index("sha256")
        return np.stack(table.loc[frame["sha256"], "feature"].to_numpy())

    a, b = rows(fp32["encoder_id"]), rows(bf16["encoder_id"])
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.mean() >= 0.998 and cosine.min() >= 0.995, cosine  # close, and not the same numbers
    assert not np.array_equal(a, b)

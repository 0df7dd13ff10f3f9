"""bf16 where the hardware has it: the rule, the features' cache key, and features that stay close to fp32."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from storage.checkpoints import sha256_file
from storage.layout import DataRoot
from storage.tables import feature_schema, read_shards
from tasks.data.training_data import DataSource, load_split
from tasks.imaging.features import compute_features
from tasks.imaging.settings import FeatureSettings
from tasks.pipeline_config import load_config
from webvse_model.branch_precision import BF16_MIN_SPEEDUP, BranchPrecision, choose_branch_precision, measure_bf16_speedups
from webvse_model.encoders import JointEmbedding
from webvse_model.precision import cpu_flags, cpu_has_amx_bf16, cpu_has_native_bf16, use_bf16
from webvse_model.settings import ModelConfig, StageConfig
from webvse_model.text import Vocabulary
from webvse_model.train import Trainer

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
    assert cpu_has_amx_bf16(str(cpuinfo)) is ("amx_bf16" in extra)
    assert ("avx2" in cpu_flags(cpuinfo.read_text())) and not cpu_has_native_bf16(
        str(tmp_path / "absent")
    )  # unknown: never assumed


def test_forced_settings_win_and_auto_follows_the_hardware() -> None:
    cpu = torch.device("cpu")
    assert use_bf16("fp32", cpu) is False and use_bf16("bf16", cpu) is True
    assert use_bf16("auto", cpu) is cpu_has_amx_bf16()  # the CNN: bf16 only with AMX (see webvse_model.precision)
    cuda = torch.device("cuda")  # only its type is read: no GPU needed
    assert use_bf16("auto", cuda) is False and use_bf16("bf16", cuda) is True  # the CNN on CUDA: fp32 unless forced
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
    assert bf16["encoder_id"] == fp32["encoder_id"] + "-bf16-folded" and (fp32["computed"], bf16["computed"]) == (12, 12)

    def rows(encoder_id: str) -> np.ndarray:
        table = read_shards(root.features_dir(encoder_id), feature_schema(1280)).to_pandas().set_index("sha256")
        return np.stack(table.loc[frame["sha256"], "feature"].to_numpy())

    a, b = rows(fp32["encoder_id"]), rows(bf16["encoder_id"])
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.mean() >= 0.998 and cosine.min() >= 0.995, cosine  # close, and not the same numbers
    assert not np.array_equal(a, b)


# ---------------------------------------------------------------- training: per branch, measured
def _tiny_model() -> JointEmbedding:
    torch.manual_seed(0)
    return JointEmbedding(
        ModelConfig(image_dim=24, vocab_size=30, tag_dim=12, embed_dim=16, hidden_dim=16, word_dim=8, gru_hidden=16)
    )


def test_auto_trains_in_bf16_only_the_branches_it_measured_faster() -> None:
    model, cpu = _tiny_model(), torch.device("cpu")
    measured = {"image": 1.6, "sentence": BF16_MIN_SPEEDUP - 0.01, "tag": 0.6}
    choice = choose_branch_precision("auto", model, 32, cpu, measure=lambda *_: measured)
    if cpu_has_native_bf16():
        assert choice.bf16 == {"image"} and choice.speedups == measured
        assert "bf16 autocast for image" in choice.describe() and "sentence 1.09x" in choice.describe()
    else:  # without native bf16 nothing is measured: bf16 would only be emulated
        assert choice.bf16 == frozenset() and choice.speedups == {} and "no native bf16" in choice.describe()
    assert choose_branch_precision("bf16", model, 32, cpu).bf16 == {"image", "sentence", "tag"}
    assert choose_branch_precision("fp32", model, 32, cpu, measure=lambda *_: measured).bf16 == frozenset()
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_branch_precision("fp16", model, 32, cpu)


def test_measuring_leaves_the_model_its_gradients_and_the_rng_as_they_were() -> None:
    model = _tiny_model()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    speedups = measure_bf16_speedups(model, 16, torch.device("cpu"))
    assert set(speedups) == {"image", "sentence", "tag"} and all(s > 0 for s in speedups.values())
    assert torch.equal(torch.get_rng_state(), rng)  # a measured run draws the same batches and weights as any other
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_each_branch_runs_in_its_own_precision_and_a_resumed_run_keeps_it(tiny_precomp: Path, tmp_path: Path) -> None:
    vocab = Vocabulary.build([["a"]], 1)
    data = load_split(DataSource(str(tiny_precomp)), "train", vocab, grouped=False, log=lambda m: None)
    model = JointEmbedding(
        ModelConfig(image_dim=data.feature_dim, vocab_size=len(vocab), tag_dim=data.tag_dim, embed_dim=16, hidden_dim=16,
                    word_dim=8, gru_hidden=16)
    )  # fmt: skip
    dtypes: dict[str, torch.dtype] = {}
    last_layers = {"image": model.image.net[-1], "sentence": model.sentence.fc, "tag": model.tag.net[-1]}  # type: ignore[union-attr]
    for branch, layer in last_layers.items():
        layer.register_forward_hook(lambda _module, _inputs, out, branch=branch: dtypes.__setitem__(branch, out.dtype))
    stage, cpu, quiet = StageConfig(epochs=1, batch_size=32), torch.device("cpu"), dict(log=lambda message: None)
    trainer = Trainer(model, stage, tmp_path / "stage1", cpu, precision="fp32", **quiet)
    trainer._branch_precision = BranchPrecision(frozenset({"image"}), "as the test sets it")
    trainer.fit(data, None, resume=False)
    assert dtypes == {"image": torch.bfloat16, "sentence": torch.float32, "tag": torch.float32}

    later = Trainer(model, replace(stage, epochs=2), tmp_path / "stage1", cpu, precision="bf16", **quiet)
    dtypes.clear()
    later.fit(data, None, resume=True)  # asked for bf16 everywhere, it goes on as it began
    assert later.branch_precision.bf16 == {"image"} and dtypes["sentence"] == torch.float32

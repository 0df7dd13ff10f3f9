"""Rules that a plausible wrong change would break silently, each pinned against a value
written by hand or a relation that must hold (issue 18). Each test names the wrong version
it catches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import webvse_model.train as train_module
from webvse_model.data import CaptionedImages
from webvse_model.encoders import JointEmbedding, ModelConfig
from webvse_model.metrics import DirectionMetrics, RetrievalMetrics, evaluate_embeddings, folded
from webvse_model.train import StageConfig, Trainer


def _distractor_embeddings(distractors: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One-hot images; caption j scores its own image 0.5 and ``distractors[j]`` other images 1.0,
    so its own image's 1-based text->image rank is exactly ``distractors[j] + 1``."""
    n = len(distractors)
    images = np.eye(n, dtype=np.float32)
    captions = np.zeros((n, n), dtype=np.float32)
    for j, count in enumerate(distractors):
        captions[j, j] = 0.5
        for step in range(1, count + 1):
            captions[j, (j + step) % n] = 1.0
    return images, captions / np.linalg.norm(captions, axis=1, keepdims=True)


def test_recall_at_k_counts_ranks_exactly_1_5_and_10() -> None:
    """Wrong version: ``rank <= K`` on 0-based ranks (or ``< K`` on 1-based): every boundary shifts by one."""
    ranks_1_based = [1, 2, 5, 6, 10, 11, 1, 1, 1, 1, 1]
    images, captions = _distractor_embeddings([r - 1 for r in ranks_1_based])
    t2i = evaluate_embeddings(images, captions, 1).t2i
    assert t2i.r1 == pytest.approx(100 * 6 / 11)  # ranks 1 (x6)
    assert t2i.r5 == pytest.approx(100 * 8 / 11)  # + ranks 2 and 5; not 6
    assert t2i.r10 == pytest.approx(100 * 10 / 11)  # + ranks 6 and 10; not 11
    assert t2i.medr == 1.0 and t2i.meanr == pytest.approx(sum(ranks_1_based) / 11)
    by_hand = DirectionMetrics.from_ranks(np.array([0, 4, 9, 10]))  # 1-based 1, 5, 10, 11
    assert (by_hand.r1, by_hand.r5, by_hand.r10, by_hand.medr) == (25.0, 50.0, 75.0, 7.0)  # medr: floor(median 6.5) + 1


def test_every_coco_fold_is_its_own_consecutive_slice_of_images_and_captions() -> None:
    """Wrong version: folds sliced on images but not on captions (or captions by ``s`` not ``s * k``)."""
    rng = np.random.default_rng(11)
    images = rng.normal(size=(30, 6)).astype(np.float32)
    captions = rng.normal(size=(150, 6)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    captions /= np.linalg.norm(captions, axis=1, keepdims=True)
    result = folded(images, captions, 5, fold_size=10)
    for f, fold in enumerate(result.folds):
        assert fold == evaluate_embeddings(images[10 * f : 10 * (f + 1)], captions[50 * f : 50 * (f + 1)], 5), f
    assert len({fold.t2i.meanr for fold in result.folds}) == 3  # the slices really differ


def _tiny_data(images: int = 12, per_image: int = 5, seed: int = 0) -> CaptionedImages:
    rng = np.random.default_rng(seed)
    lengths = np.full(images * per_image, 4, dtype=np.int64)
    tokens = rng.integers(4, 30, size=(images * per_image, 4)).astype(np.int64)
    return CaptionedImages(rng.normal(size=(images, 16)).astype(np.float32), tokens, lengths, np.repeat(np.arange(images), per_image))


def _trainer(tmp_path: Path, **config: object) -> Trainer:
    torch.manual_seed(0)
    model = JointEmbedding(ModelConfig(image_dim=16, vocab_size=30, tag_dim=0, embed_dim=8, hidden_dim=8, word_dim=8, gru_hidden=8))
    settings = StageConfig(**{"epochs": 1, "batch_size": 20, "lambda_tag": 0.0, **config})  # type: ignore[arg-type]
    return Trainer(model, settings, tmp_path / "ckpt", torch.device("cpu"), log=lambda m: None)


def test_best_is_the_epoch_with_the_best_validation_rsum_not_the_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong version: ``best`` saved every epoch (= the last), or on the lowest rsum."""
    scripted = iter([10.0, 30.0, 20.0])

    def validation(model: object, data: object, k: int) -> RetrievalMetrics:
        r1 = next(scripted) / 6  # rsum = 6 x r1
        side = DirectionMetrics(r1, r1, r1, 1.0, 1.0)
        return RetrievalMetrics(side, side)

    monkeypatch.setattr(train_module, "evaluate_split", validation)
    trainer = _trainer(tmp_path, epochs=3)
    result = trainer.fit(_tiny_data(), _tiny_data(seed=1), captions_per_image=5)
    assert result.best_epoch == 2 and result.best_rsum == pytest.approx(30.0)
    assert trainer.store.records()["best"].meta["epoch"] == 2


def test_gradients_are_clipped_to_the_paper_s_norm_of_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong version: no clipping, or clipping at another norm (the default must be the paper's 2)."""
    assert StageConfig().grad_clip == 2.0
    before, after = [], []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        params = list(params)
        before.append(float(clip(params, float("inf"))))  # the norm as computed
        total = clip(params, max_norm)
        after.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    trainer = _trainer(tmp_path, loss="vse", lr=1e-3)  # the sum of negatives: large gradients at the start
    trainer._train_epoch(_tiny_data(images=40), 0)
    assert max(before) > 2.0  # clipping had work to do
    assert max(after) <= 2.0 + 1e-4


def test_the_sentence_loss_knows_which_captions_share_an_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong version: ``ranking_loss`` called without image ids, so the other captions of an
    image in the batch are counted as its negatives."""
    seen: list[torch.Tensor] = []
    real = train_module.ranking_loss

    def recording(images: torch.Tensor, texts: torch.Tensor, image_ids: torch.Tensor | None = None, *args: object) -> torch.Tensor:
        seen.append(image_ids)
        return real(images, texts, image_ids, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module, "ranking_loss", recording)
    data = _tiny_data(images=4)
    rows = np.arange(20)  # all 5 captions of 4 images in one batch
    _trainer(tmp_path)._caption_step_loss(data, rows)
    assert seen and seen[0] is not None
    assert seen[0].tolist() == data.caption_image[rows].tolist()


def test_stage_ii_batches_are_drawn_through_the_curriculum(tmp_path: Path) -> None:
    """Wrong version: the Trainer draws web batches from every pair whatever the schedule."""
    from dataclasses import replace

    from webvse_model.data import CurriculumSchedule, WebPairs

    rng = np.random.default_rng(5)
    ranks = rng.integers(1, 101, size=200)
    web = WebPairs(rng.normal(size=(200, 16)).astype(np.float32), rng.normal(size=(200, 6)).astype(np.float32), ranks)
    drawn: dict[bool, set[int]] = {}
    for enabled in (True, False):
        torch.manual_seed(0)
        model = JointEmbedding(ModelConfig(image_dim=16, vocab_size=30, tag_dim=6, embed_dim=8, hidden_dim=8, word_dim=8, gru_hidden=8))
        schedule = CurriculumSchedule(enabled=enabled, start_fraction=0.3, full_at_epoch=5)
        config = replace(StageConfig(batch_size=20), name="stage2", lambda_sentence=0.0, curriculum=schedule)
        trainer = Trainer(model, config, tmp_path / f"c{enabled}", torch.device("cpu"), log=lambda m: None)
        rows: list[int] = []
        step = trainer._web_step_loss
        trainer._web_step_loss = lambda data, batch, step=step, rows=rows: (rows.extend(batch.tolist()), step(data, batch))[1]  # type: ignore[method-assign]
        trainer._train_epoch(web, 0)
        drawn[enabled] = set(rows)
    keywords = sorted(set(ranks.tolist()))  # rank 1 = the most frequent keyword
    first_keywords = set(keywords[: int(np.ceil(0.3 * len(keywords)))])  # the 30 % most frequent keywords
    frequent = {i for i, rank in enumerate(ranks.tolist()) if rank in first_keywords}
    assert drawn[True] == frequent  # epoch 0 of the curriculum: exactly those
    assert drawn[False] == set(range(200))  # the ablation: every pair


def test_the_code_key_of_a_step_changes_with_the_source_of_the_modules_it_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong version: the key hashes module names (or the task wrapper only), so a fix is served stale."""
    from tasks.orchestration import CodeOf, _module_digest

    package = tmp_path / "pinned_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "work.py").write_text("def rule(x):\n    return x < 5\n")
    (package / "other.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def key() -> str:
        _module_digest.cache_clear()
        return CodeOf(modules=("pinned_pkg.work",)).compute_key(None, {}, {})  # type: ignore[arg-type]

    first = key()
    (package / "other.py").write_text("VALUE = 2\n")
    assert key() == first  # a module the step does not name
    (package / "work.py").write_text("def rule(x):\n    return x <= 5\n")
    assert key() != first


def test_feature_rows_are_keyed_by_the_bytes_of_the_image_not_its_name(tmp_path: Path) -> None:
    """Wrong version: keyed by file name: a renamed copy is encoded again, an edited file is not."""
    import pandas as pd
    from PIL import Image

    from storage.checkpoints import sha256_file
    from storage.layout import DataRoot
    from tasks.features import FeatureSettings, compute_features

    def image(path: Path, shade: int) -> Path:
        Image.new("RGB", (40, 30), (shade, 80, 120)).save(path, format="PNG")
        return path

    a, c = image(tmp_path / "a.png", 10), image(tmp_path / "c.png", 200)
    b = tmp_path / "b.png"
    b.write_bytes(a.read_bytes())  # the same photo under another name

    def frame(*paths: Path) -> pd.DataFrame:
        return pd.DataFrame({"sha256": [sha256_file(p) for p in paths], "path": [str(p) for p in paths]})

    root, settings = DataRoot.resolve(tmp_path / "root"), FeatureSettings(batch_size=4, workers=0, device="cpu")
    first = compute_features(root, frame(a, b, c), settings, log=lambda m: None)
    assert first["computed"] == 2  # a and its copy b: one image
    image(c, 201)  # one shade changed, same name
    again = compute_features(root, frame(a, b, c), settings, log=lambda m: None)
    assert (again["computed"], again["cached"]) == (1, 2)

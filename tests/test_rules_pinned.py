"""Rules that a plausible wrong change would break silently, each pinned against a value
written by hand or a relation that must hold (issue 18). Each test names the wrong version
it catches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import webvse_model.train as train_module
from storage.errors import InputError
from webvse_model.data import CaptionedImages
from webvse_model.encoders import JointEmbedding
from webvse_model.metrics import DirectionMetrics, RetrievalMetrics, evaluate_embeddings, folded, mean_metrics
from webvse_model.settings import ModelConfig, StageConfig
from webvse_model.train import Trainer


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
    """Wrong versions: folds sliced on images but not on captions (or captions by ``s`` not
    ``s * k``); the fold's captions-per-image not passed on (3 here, not the default 5); the
    average not over every fold; COCO's 5 captions per image not the default."""
    rng = np.random.default_rng(11)
    images = rng.normal(size=(30, 6)).astype(np.float32)
    captions = rng.normal(size=(90, 6)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    captions /= np.linalg.norm(captions, axis=1, keepdims=True)
    result = folded(images, captions, 3, fold_size=10)
    for f, fold in enumerate(result.folds):
        assert fold == evaluate_embeddings(images[10 * f : 10 * (f + 1)], captions[30 * f : 30 * (f + 1)], 3), f
    assert len({fold.t2i.meanr for fold in result.folds}) == 3  # the slices really differ
    assert result.protocol == "3x10"
    assert result.metrics.t2i.meanr == pytest.approx(sum(fold.t2i.meanr for fold in result.folds) / 3)
    assert result.metrics.i2t.r10 == pytest.approx(sum(fold.i2t.r10 for fold in result.folds) / 3)
    five = rng.normal(size=(100, 6)).astype(np.float32)
    assert folded(images[:20], five, fold_size=10) == folded(images[:20], five, 5, fold_size=10)
    with pytest.raises(InputError, match="^no results to average$"):
        mean_metrics([])


def _tiny_data(images: int = 12, per_image: int = 5, seed: int = 0) -> CaptionedImages:
    rng = np.random.default_rng(seed)
    lengths = np.full(images * per_image, 4, dtype=np.int64)
    tokens = rng.integers(4, 30, size=(images * per_image, 4)).astype(np.int64)
    return CaptionedImages(
        rng.normal(size=(images, 16)).astype(np.float32), tokens, lengths, np.repeat(np.arange(images), per_image)
    )


def _trainer(tmp_path: Path, **config: object) -> Trainer:
    torch.manual_seed(0)
    model = JointEmbedding(
        ModelConfig(image_dim=16, vocab_size=30, tag_dim=0, embed_dim=8, hidden_dim=8, word_dim=8, gru_hidden=8)
    )
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

    def recording(
        images: torch.Tensor, texts: torch.Tensor, image_ids: torch.Tensor | None = None, *args: object
    ) -> torch.Tensor:
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

    from webvse_model.data import WebPairs
    from webvse_model.settings import CurriculumSchedule

    rng = np.random.default_rng(5)
    ranks = rng.integers(1, 101, size=200)
    web = WebPairs(rng.normal(size=(200, 16)).astype(np.float32), rng.normal(size=(200, 6)).astype(np.float32), ranks)
    drawn: dict[bool, set[int]] = {}
    for enabled in (True, False):
        torch.manual_seed(0)
        model = JointEmbedding(
            ModelConfig(image_dim=16, vocab_size=30, tag_dim=6, embed_dim=8, hidden_dim=8, word_dim=8, gru_hidden=8)
        )
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


def test_the_code_key_of_a_step_changes_with_the_source_of_the_modules_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wrong version: the key hashes module names (or the task wrapper only), so a fix is served stale."""
    from tasks.cache_keys import CodeOf, _module_digest

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
    from tasks.imaging.features import compute_features
    from tasks.imaging.settings import FeatureSettings

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


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ({}, "kept"),
        ({"owner": ""}, "rejected:malformed"),
        ({"license_id": None}, "rejected:malformed"),
        ({"license_id": 0}, "rejected:license"),  # all rights reserved
        ({"license_id": 9}, "kept"),  # CC0, the last licence of the list
        ({"english_count": 1}, "rejected:few_english_tags"),
        ({"english_count": 2}, "kept"),  # exactly the paper's 2 is enough
        ({"owner_kept": {"alice": 4}}, "kept"),  # the fifth photo of an owner is kept...
        ({"owner_kept": {"alice": 5}}, "rejected:owner_limit"),  # ...the sixth is not
        ({"owner_kept": {"bob": 5}}, "kept"),  # another owner's count is not alice's
        ({"first_kept": {("a", "b", "c", "d", "e")}}, "rejected:same_first_tags"),
        ({"first_kept": {("a", "b", "c", "d", "x")}}, "kept"),  # four of five first tags shared
        ({"first_kept": {("a", "b", "c", "d")}}, "kept"),  # the key is five tags, not four
        ({"english_count": 0, "owner_kept": {"alice": 9}}, "rejected:few_english_tags"),  # the paper's order
        ({"license_id": 0, "english_count": 0}, "rejected:license"),
        ({"owner_kept": {"alice": 5}, "first_kept": {("a", "b", "c", "d", "e")}}, "rejected:owner_limit"),
    ],
)
def test_each_crawl_filter_at_its_boundary_and_in_the_paper_s_order(case: dict[str, object], expected: str) -> None:
    """Wrong versions: ``<=`` for ``<`` at 2 English tags or 5 per owner, four first tags, a
    counter shared by owners, filters in another order (which changes the recorded reason)."""
    from tasks.crawling.config import CrawlConfig
    from tasks.crawling.rules import photo_verdict

    facts: dict[str, object] = {
        "tags": ["a", "b", "c", "d", "e", "f"], "owner": "alice", "license_id": 4, "english_count": 3,
        "owner_kept": {}, "first_kept": set(),
    }  # fmt: skip
    facts.update(case)
    assert photo_verdict(settings=CrawlConfig(), **facts) == expected  # type: ignore[arg-type]
    strict = CrawlConfig(max_per_owner=1, min_english_tags=0)  # an owner's first photo is kept, however strict the limit
    assert photo_verdict(["x"], "carol", 4, 0, strict, {}, set()) == "kept"
    assert photo_verdict(["y"], "carol", 4, 0, strict, {"carol": 1}, set()) == "rejected:owner_limit"


def test_the_curriculum_s_settings_are_checked_at_their_bounds() -> None:
    """Wrong versions: a curriculum that starts from no keyword at all (fraction 0 draws nothing),
    or one that refuses to start from every keyword (fraction 1) or to grow at once (epoch 0)."""
    from webvse_model.settings import CurriculumSchedule

    for bad in ({"start_fraction": 0.0}, {"start_fraction": 1.01}, {"full_at_epoch": -1}):
        with pytest.raises(InputError, match="curriculum"):
            CurriculumSchedule(**bad)  # type: ignore[arg-type]
    assert CurriculumSchedule(start_fraction=1.0).fraction(0) == 1.0
    assert CurriculumSchedule(full_at_epoch=0).fraction(0) == 1.0
    schedule = CurriculumSchedule(start_fraction=0.2, full_at_epoch=4)
    assert [schedule.fraction(e) for e in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])


def test_a_step_s_input_fingerprint_follows_content_and_names_not_times(tmp_path: Path) -> None:
    """Wrong versions: keyed on modification times or sizes (a touched file re-runs a step, an
    edit of equal length does not); temporary or hidden files of a writer in progress counted;
    a missing input the same as an empty one."""
    import os

    from storage.fingerprint import fingerprint

    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "part-0.parquet").write_bytes(b"abcd")
    single = tmp_path / "keywords.parquet"
    single.write_bytes(b"dog\n")
    first = fingerprint([folder, single])
    os.utime(single, (1, 1))  # touched, same bytes
    assert fingerprint([folder, single]) == first
    (folder / "part-1.parquet.tmp").write_bytes(b"half")
    (folder / ".lock").write_bytes(b"pid")
    (folder / ".writer").mkdir()
    (folder / ".writer" / "part-2.parquet").write_bytes(b"in progress")
    assert fingerprint([folder, single]) == first
    single.write_bytes(b"cat\n")  # same size, other content
    assert fingerprint([folder, single]) != first
    single.write_bytes(b"dog\n")
    assert fingerprint([folder, single]) == first
    (folder / "part-0.parquet").rename(folder / "part-9.parquet")
    assert fingerprint([folder, single]) != first  # a renamed shard is another table
    (folder / "part-9.parquet").rename(folder / "part-0.parquet")
    (folder / "nested").mkdir()
    (folder / "nested" / "more.parquet").write_bytes(b"e")
    assert fingerprint([folder, single]) != first  # folders are walked all the way down
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    assert fingerprint([tmp_path / "absent.parquet"]) != fingerprint([empty])
    assert fingerprint([folder, single]) != fingerprint([single, folder])  # which input is which


def _unit_rows(rng: np.random.Generator, rows: int, dim: int = 8) -> np.ndarray:
    x = rng.normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_standard_protocols_slice_and_size_the_test_set_as_published() -> None:
    """Wrong versions: COCO 1K not 5 folds of 1,000 (or not averaged), 5K or F30K folded, a wrong
    size accepted, the evaluation options (chunking, device) not passed to every fold."""
    from webvse_model.metrics import run_protocol

    rng = np.random.default_rng(5)
    images, captions = _unit_rows(rng, 5000), _unit_rows(rng, 25000)
    coco1k = run_protocol("coco-1k", images, captions)
    assert (coco1k.protocol, len(coco1k.folds)) == ("coco-1k", 5)
    pairs = run_protocol("coco-1k", images, captions[:10000], 2)  # two captions per image, passed on to the folds
    assert pairs.folds[1] == evaluate_embeddings(images[1000:2000], captions[2000:4000], 2)
    assert coco1k.folds[3] == evaluate_embeddings(images[3000:4000], captions[15000:20000], 5)
    assert coco1k.metrics == mean_metrics(list(coco1k.folds))
    assert folded(images[:2000], captions[:10000]).protocol == "2x1000"  # COCO's fold of 1,000 is the default
    coco5k = run_protocol("coco-5k", images, captions)
    assert (coco5k.protocol, coco5k.folds) == ("coco-5k", ())
    assert coco5k.metrics == evaluate_embeddings(images, captions, 5)
    f30k = run_protocol("f30k-1k", images[:1000], captions[:5000])
    assert (f30k.protocol, f30k.metrics) == ("f30k-1k", evaluate_embeddings(images[:1000], captions[:5000], 5))
    three = run_protocol("all", images[:40], captions[:120], 3)  # captions per image passed on
    assert (three.protocol, three.metrics) == ("all", evaluate_embeddings(images[:40], captions[:120], 3))
    for name, n in (("coco-1k", 4000), ("coco-5k", 5001), ("f30k-1k", 999)):
        with pytest.raises(InputError, match=f"protocol {name} needs .* test images, got {n}"):
            run_protocol(name, _unit_rows(rng, n), _unit_rows(rng, 5 * n))
    with pytest.raises(InputError, match="unknown protocol 'COCO-1K'"):
        run_protocol("COCO-1K", images, captions)
    for name, n in (("coco-1k", 5000), ("coco-5k", 5000), ("all", 40)):  # the options reach the evaluation
        with pytest.raises(InputError, match="chunk_size must be >= 1"):
            run_protocol(name, images[:n], captions[: 5 * n], chunk_size=0)
    with pytest.raises(InputError, match="5000 images do not split into folds of 3000"):
        folded(images, captions, fold_size=3000)


def test_batches_carry_each_caption_s_image_and_its_tags_and_pad_no_wider_than_needed() -> None:
    """Wrong versions: the clean images' tag vectors (the nouns and verbs of their captions, the
    L_IT of Stage I) or their has-tags mask dropped from a batch; padding wider than the longest
    caption; a one-token caption refused; token ids or features stored in another dtype."""
    from webvse_model.data import caption_batch, pad_token_ids

    padded, lengths = pad_token_ids([[7], [3, 4, 5], [9, 2]])
    assert padded.tolist() == [[7, 0, 0], [3, 4, 5], [9, 2, 0]] and lengths.tolist() == [1, 3, 2]
    assert padded.dtype == np.int64 and lengths.dtype == np.int64  # embedding lookups need int64
    assert pad_token_ids([[7]])[0].shape == (1, 1)
    with pytest.raises(InputError, match="^every encoded caption needs at least one token$"):
        pad_token_ids([[1], []])
    assert pad_token_ids([])[0].shape == (0, 1)  # an empty list pads to nothing, without an error
    tags = np.arange(12, dtype=np.float64).reshape(4, 3)
    tags[2] = 0.0  # an image none of whose tags has a word vector
    data = CaptionedImages(np.ones((4, 5)), *pad_token_ids([[1, 2], [3], [4, 5, 6], [7], [8]]), np.array([0, 1, 2, 3, 3]), tags)
    assert data.features.dtype == np.float32 and data.tag_vectors is not None and data.tag_vectors.dtype == np.float32
    batch = caption_batch(data, np.array([4, 2, 1]), torch.device("cpu"))
    assert batch.image_ids.tolist() == [3, 2, 1] and batch.tokens.shape == (3, 3)
    assert batch.tag_vectors is not None and batch.tag_vectors.tolist() == tags[[3, 2, 1]].tolist()
    assert batch.has_tags is not None and batch.has_tags.tolist() == [True, False, True]
    assert caption_batch(data, np.array([1, 3]), torch.device("cpu")).tokens.shape == (2, 1)  # trimmed to the longest


def test_captions_are_grouped_only_when_each_image_has_its_own_in_order() -> None:
    """Wrong version: grouping checked on the count alone (or the order alone)."""
    data = CaptionedImages(np.ones((2, 3)), np.ones((4, 1), np.int64), np.ones(4, np.int64), np.array([0, 1, 0, 1]))
    with pytest.raises(InputError, match="exactly 2 captions per image, grouped in image order"):
        data.check_grouped(2)  # right count, wrong order
    with pytest.raises(InputError, match=r"\(2 images, 4 captions\)"):
        data.check_grouped(3)  # wrong count
    CaptionedImages(np.ones((2, 3)), np.ones((4, 1), np.int64), np.ones(4, np.int64), np.array([0, 0, 1, 1])).check_grouped(2)


def test_web_pairs_and_clean_data_are_checked_and_stored_as_the_model_reads_them() -> None:
    """Wrong versions: a single web pair refused; float64 features kept (twice the memory, a dtype
    error in the model); non-finite values accepted; messages that do not say which data is wrong."""
    from webvse_model.data import WebPairs

    one = WebPairs(np.ones((1, 4)), np.ones((1, 3)), [2], name="night 3 photos")
    assert (one.features.dtype, one.tag_vectors.dtype, one.keyword_rank.dtype) == (np.float32, np.float32, np.int64)
    with pytest.raises(InputError, match=r"night 3 photos: need equal, non-zero numbers of features \(0\)"):
        WebPairs(np.ones((0, 4)), np.ones((0, 3)), [], name="night 3 photos")
    bad = np.ones((2, 4))
    bad[1, 2] = np.nan
    with pytest.raises(InputError, match="night 3 photos features"):
        WebPairs(bad, np.ones((2, 3)), [1, 2], name="night 3 photos")
    with pytest.raises(InputError, match="night 3 photos tag vectors"):
        WebPairs(np.ones((2, 4)), bad[:, :3], [1, 2], name="night 3 photos")
    with pytest.raises(InputError, match="val image features"):
        CaptionedImages(bad, np.ones((2, 1), np.int64), np.ones(2, np.int64), np.array([0, 1]), name="val")
    with pytest.raises(InputError, match=r"val: image features must be a non-empty \[N, V\] matrix, got \(0, 4\)"):
        CaptionedImages(np.ones((0, 4)), np.ones((2, 1), np.int64), np.ones(2, np.int64), np.array([0, 1]), name="val")


def test_the_curriculum_pool_holds_at_least_the_most_frequent_keyword() -> None:
    """Wrong version: a first pool of two keywords when the fraction asks for less than one."""
    from webvse_model.settings import CurriculumSchedule

    ranks = np.array([1, 2, 3, 1, 2, 3])
    pool = CurriculumSchedule(start_fraction=0.1, full_at_epoch=10).pool(ranks, 0)
    assert sorted(ranks[pool].tolist()) == [1, 1]


def test_a_clean_split_is_checked_and_its_tag_mask_kept_as_given() -> None:
    """Wrong versions: mismatched captions and lengths accepted; a one-caption split refused;
    tag vectors counted per dimension instead of per image; an explicit has-tags mask replaced
    by the guess from zero vectors; links and masks stored in other dtypes."""

    def split(**kw: object) -> CaptionedImages:
        values: dict[str, object] = {
            "features": np.ones((2, 3)), "tokens": np.ones((2, 1), np.int64), "lengths": np.ones(2, np.int64),
            "caption_image": np.array([0, 1], np.int32), "name": "val",
        }  # fmt: skip
        return CaptionedImages(**{**values, **kw})  # type: ignore[arg-type]

    assert split().caption_image.dtype == np.int64  # image ids are compared with int64 tensors in the losses
    one = split(tokens=np.ones((1, 1), np.int64), lengths=np.ones(1, np.int64), caption_image=[1])
    assert one.num_captions == 1
    with pytest.raises(InputError, match="val: 2 captions but 3 caption->image links"):
        split(caption_image=[0, 1, 1])
    with pytest.raises(InputError, match="val: 2 captions but 2 caption->image links"):
        split(lengths=np.ones(3, np.int64))  # the lengths disagree with the captions
    with pytest.raises(InputError, match="val: no captions"):
        split(tokens=np.ones((0, 1), np.int64), lengths=np.ones(0, np.int64), caption_image=[])
    with pytest.raises(InputError, match=r"val: a caption points to an image outside 0\.\.1"):
        split(caption_image=[0, 2])
    with pytest.raises(InputError, match="val: 3 tag vectors for 2 images"):
        split(tag_vectors=np.ones((3, 2)))
    bad = np.ones((2, 4))
    bad[0, 0] = np.inf
    with pytest.raises(InputError, match="val tag vectors"):
        split(tag_vectors=bad)
    given = split(tag_vectors=np.ones((2, 4)), has_tags=[1, 0])
    assert given.has_tags is not None and given.has_tags.dtype == bool and given.has_tags.tolist() == [True, False]
    guessed = split(tag_vectors=np.array([[0.0, 0.0], [0.0, 0.5]]))
    assert guessed.has_tags is not None and guessed.has_tags.tolist() == [False, True] and guessed.images_without_tags == 1


def test_scores_float32_cannot_tell_apart_are_ranked_by_their_exact_float64_values() -> None:
    """Wrong versions: the re-check stored in float32 (the near-ties become ties and the tie rule,
    larger index first, reverses them), or only its first blocks of pairs re-checked (1,600
    undecided pairs here, blocks of 256)."""
    from webvse_model.metrics import retrieval_ranks

    n = 40
    images = np.stack([np.ones(n), (n - np.arange(n)) * 2.0**-10], axis=1).astype(np.float32)
    captions = np.tile(np.array([1.0, 2.0**-20], np.float32), (n, 1))  # every caption alike
    scores32 = captions[:1] @ images.T
    assert len(set(scores32.ravel().tolist())) == 1  # float32: one tie of 40 images
    _, t2i = retrieval_ranks(images, captions, 1)
    assert t2i.tolist() == list(range(n))  # exact: image 0 scores highest, image 39 lowest


def test_a_non_finite_value_is_counted_by_row() -> None:
    """Wrong version: the count in the message counts values or columns instead of rows."""
    from webvse_model.data import WebPairs

    bad = np.ones((5, 4))
    bad[1, :3] = np.nan
    bad[3, 0] = np.inf
    with pytest.raises(InputError, match="^web tag vectors: 2 rows contain NaN or infinite values$"):
        WebPairs(np.ones((5, 2)), bad, np.arange(5), name="web")


def test_batches_keep_a_last_batch_of_two_and_drop_a_single_row() -> None:
    """Wrong version: a last batch of exactly two rows dropped (it has its negative)."""
    from webvse_model.data import batch_slices

    assert [b.tolist() for b in batch_slices(np.arange(5), 3)] == [[0, 1, 2], [3, 4]]
    assert [b.tolist() for b in batch_slices(np.arange(4), 3)] == [[0, 1, 2]]


def _loss_of(scores: list[list[float]], **kw: object) -> float:
    """The loss of a batch whose score matrix is ``scores`` (images = one-hot rows, texts = its columns)."""
    from webvse_model.losses import ranking_loss

    s = torch.tensor(scores, dtype=torch.float64)
    return float(ranking_loss(torch.eye(len(scores), dtype=torch.float64), s.t().contiguous(), **kw))  # type: ignore[arg-type]


def test_both_hinge_directions_by_hand_on_an_asymmetric_batch() -> None:
    """Wrong versions: the text->image direction compared with the image's own score instead of
    the text's (the two directions then count the same hinge twice); a default margin other than
    the paper's 0.2; captions of one image counted as each other's negatives."""
    s = [[0.9, 0.5, 0.1], [0.8, 0.6, 0.3], [0.2, 0.7, 0.4]]
    # image->text, row i: [0.2 - s_ii + s_ij]+ = (1,0) 0.4, (2,1) 0.5; text->image, column j:
    # [0.2 - s_jj + s_ij]+ = (1,0) 0.1, (0,1) 0.1, (2,1) 0.3, (1,2) 0.1
    assert _loss_of(s, variant="vse") == pytest.approx(0.9 + 0.6)
    assert _loss_of(s, variant="vse++") == pytest.approx((0.4 + 0.5) + (0.1 + 0.3 + 0.1))
    assert _loss_of(s, variant="vse", margin=0.0) == pytest.approx(0.2 + 0.3 + 0.0 + 0.1)  # (1,0) .2, (2,1) .3; (2,1) .1
    same_image = torch.tensor([0, 0, 1])  # rows 0 and 1 are two captions of one image
    assert _loss_of(s, variant="vse", image_ids=same_image) == pytest.approx(0.5 + 0.4)
    assert _loss_of(s, variant="vse++", image_ids=same_image) == pytest.approx(0.5 + (0.3 + 0.1))


def test_a_step_s_cache_key_joins_its_inputs_its_code_and_what_it_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong versions: the step's modules or the files it reads left out of the key; ``fresh``
    (start over) in the key, so refreshing a step changes its cache record."""
    from tasks.cache_keys import _module_digest, step_cache

    (tmp_path / "keyed_step.py").write_text("RULE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    read = tmp_path / "keywords.parquet"
    read.write_bytes(b"dog")
    policy = step_cache(("keyed_step",), reads=lambda inputs: [inputs["path"]])  # what it reads, named by its inputs

    def key(**inputs: object) -> str:
        _module_digest.cache_clear()
        return policy.compute_key(None, {"settings": 1, "path": read, **inputs}, {})  # type: ignore[arg-type]

    reads_nothing = step_cache(("keyed_step",)).compute_key(None, {"settings": 1}, {})  # type: ignore[arg-type]
    assert reads_nothing is not None and reads_nothing != step_cache(("keyed_step",)).compute_key(None, {"settings": 2}, {})  # type: ignore[arg-type]

    first = key()
    assert key(fresh=True) == first
    assert key(settings=2) != first
    read.write_bytes(b"cat")
    assert key() != first
    read.write_bytes(b"dog")
    assert key() == first
    (tmp_path / "keyed_step.py").write_text("RULE = 2\n")
    assert key() != first


def test_evaluation_inputs_are_checked_by_name_and_finite_values_that_overflow_a_sum_pass() -> None:
    """Wrong versions: a NaN check that refuses finite values whose float32 sum overflows; messages
    that do not say which input is wrong or how many rows it has; COCO's 5 captions per image not
    the default; a chunk of one caption refused; ranks returned as floats."""
    from webvse_model.metrics import retrieval_ranks

    rng = np.random.default_rng(3)
    images, captions = _unit_rows(rng, 4), _unit_rows(rng, 20)
    huge = images.copy()
    huge[:, 0] = 3e38  # finite, but the sum is inf in float32
    assert retrieval_ranks(huge, np.full((20, 8), 3e38, np.float32))[0].shape == (4,)
    i2t, t2i = retrieval_ranks(images, captions)  # 5 captions per image unless told
    assert (i2t.dtype, t2i.dtype, t2i.shape) == (np.int64, np.int64, (20,))
    one_at_a_time = evaluate_embeddings(images, captions, 5, chunk_size=1)
    assert one_at_a_time == evaluate_embeddings(images, captions, 5)
    with pytest.raises(InputError, match=r"^images must be a non-empty \[rows, D\] matrix, got shape \(0, 8\)$"):
        retrieval_ranks(np.zeros((0, 8), np.float32), captions)
    with pytest.raises(InputError, match=r"^captions must be a non-empty \[rows, D\] matrix"):
        retrieval_ranks(images, np.zeros((0, 8), np.float32))
    nan = captions.copy()
    nan[2, 1] = np.nan
    with pytest.raises(InputError, match="^captions"):
        retrieval_ranks(images, nan)
    with pytest.raises(InputError, match=r"^4 images x 5 captions each need 20 caption rows, got 19$"):
        retrieval_ranks(images, captions[:19])

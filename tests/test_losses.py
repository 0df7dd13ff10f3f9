"""The hinge ranking loss against hand-computed values (see the arithmetic in comments)."""

from __future__ import annotations

import pytest
import torch

from webvse_model.losses import ranking_loss

# images = e1, e2, e3; texts chosen so that scores s = images @ texts.T =
# [[0.6, 0.8, 0.0], [0.8, 0.6, 0.8], [0.0, 0.0, 0.6]] and every positive is 0.6.
IMAGES = torch.eye(3)
TEXTS = torch.tensor([[0.6, 0.8, 0.0], [0.8, 0.6, 0.0], [0.0, 0.8, 0.6]])


def test_scores_are_what_the_comments_say() -> None:
    expected = torch.tensor([[0.6, 0.8, 0.0], [0.8, 0.6, 0.8], [0.0, 0.0, 0.6]])
    assert torch.allclose(IMAGES @ TEXTS.t(), expected)


def test_vse_sums_all_violating_negatives() -> None:
    # with margin 0.2 a negative costs s - 0.4 when positive. Rows (image anchors):
    # (0,1)=0.4, (1,0)=0.4, (1,2)=0.4 -> 1.2; columns (text anchors): (1,0)=0.4,
    # (0,1)=0.4, (1,2)=0.4 -> 1.2. Total 2.4.
    loss = ranking_loss(IMAGES, TEXTS, margin=0.2, variant="vse")
    assert loss.item() == pytest.approx(2.4, abs=1e-6)


def test_vse_plus_plus_keeps_only_the_hardest_negative() -> None:
    # row maxima 0.4, 0.4, 0 -> 0.8; column maxima 0.4, 0.4, 0.4 -> 1.2. Total 2.0.
    loss = ranking_loss(IMAGES, TEXTS, margin=0.2, variant="vse++")
    assert loss.item() == pytest.approx(2.0, abs=1e-6)


def test_captions_of_the_same_image_are_not_negatives() -> None:
    # rows 0 and 1 show the same image: pairs (0,1) and (1,0) are excluded, leaving
    # (1,2)=0.4 as image anchor and (1,2)=0.4 as text anchor.
    ids = torch.tensor([0, 0, 1])
    assert ranking_loss(IMAGES, TEXTS, ids, 0.2, "vse").item() == pytest.approx(0.8, abs=1e-6)
    assert ranking_loss(IMAGES, TEXTS, ids, 0.2, "vse++").item() == pytest.approx(0.8, abs=1e-6)


def test_margin_scales_the_violation() -> None:
    # with margin 0 only the 0.8 vs 0.6 pairs violate, by 0.2 each (3 rows + 3 columns)
    assert ranking_loss(IMAGES, TEXTS, margin=0.0, variant="vse").item() == pytest.approx(1.2, abs=1e-6)


def test_gradients_flow_to_both_sides() -> None:
    images = IMAGES.clone().requires_grad_(True)
    texts = TEXTS.clone().requires_grad_(True)
    ranking_loss(images, texts).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert texts.grad is not None and texts.grad.abs().sum() > 0


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="variant"):
        ranking_loss(IMAGES, TEXTS, variant="triplet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must both be"):
        ranking_loss(IMAGES, TEXTS[:2])
    with pytest.raises(ValueError, match="image_ids"):
        ranking_loss(IMAGES, TEXTS, torch.tensor([0, 1]))


def test_vsepp_warmup_uses_the_sum_of_negatives_first() -> None:
    from webvse_model.encoders import JointEmbedding
    from webvse_model.settings import ModelConfig, StageConfig
    from webvse_model.train import Trainer

    model = JointEmbedding(ModelConfig(image_dim=3, vocab_size=5, embed_dim=3, hidden_dim=3, word_dim=2, gru_hidden=2))
    trainer = Trainer(model, StageConfig(warmup_epochs=2), "/nonexistent-unused", torch.device("cpu"), log=lambda m: None)
    for epoch, expected in ((0, 2.4), (1, 2.4), (2, 2.0)):  # the hand-computed VSE and VSE++ values above
        trainer._epoch = epoch
        assert trainer._loss(IMAGES, TEXTS, torch.arange(3)).item() == pytest.approx(expected, abs=1e-6)


def test_stage2_starts_on_the_configured_loss_without_warmup() -> None:
    """The warm-up protects a random model; Stage II starts from the trained Stage I model."""
    from webvse_model.encoders import JointEmbedding
    from webvse_model.settings import ModelConfig, StageConfig, stage2_defaults
    from webvse_model.train import Trainer

    model = JointEmbedding(ModelConfig(image_dim=3, vocab_size=5, embed_dim=3, hidden_dim=3, word_dim=2, gru_hidden=2))
    stage2 = stage2_defaults(StageConfig(loss="vse++", warmup_epochs=2), epochs=3)
    trainer = Trainer(model, stage2, "/nonexistent-unused", torch.device("cpu"), log=lambda m: None)
    trainer._epoch = 0
    assert trainer._loss(IMAGES, TEXTS, torch.arange(3)).item() == pytest.approx(2.0, abs=1e-6)  # VSE++, not VSE's 2.4

"""Tokenizer, vocabulary and the three encoder branches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from webvse_model.encoders import JointEmbedding
from webvse_model.settings import ModelConfig
from webvse_model.text import Vocabulary, tokenize


def test_tokenize_lowercases_and_drops_symbols() -> None:
    assert tokenize("A Dog's ball, 2 cats!! 🐶") == ["a", "dog's", "ball", "2", "cats"]
    assert tokenize("") == []


def test_vocabulary_threshold_order_and_json_round_trip(tmp_path: Path) -> None:
    vocab = Vocabulary.build([["dog", "cat"], ["dog", "cat"], ["dog", "eel"]], min_count=2)
    assert vocab.tokens == ("<pad>", "<start>", "<end>", "<unk>", "dog", "cat")
    assert vocab.encode(["dog", "eel"]) == [1, 4, 3, 2]
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json") == vocab
    (tmp_path / "bad.json").write_text('{"tokens": ["dog"]}')
    with pytest.raises(ValueError, match="bad.json is not a webvse vocabulary"):
        Vocabulary.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Vocabulary.load(tmp_path / "missing.json")


def _model(tag_dim: int = 6) -> JointEmbedding:
    torch.manual_seed(0)
    return JointEmbedding(
        ModelConfig(image_dim=10, vocab_size=20, tag_dim=tag_dim, embed_dim=8, hidden_dim=12, word_dim=5, gru_hidden=7)
    )


def test_every_branch_lands_on_the_unit_sphere() -> None:
    model = _model()
    images = model.encode_images(torch.randn(4, 10))
    captions = model.encode_captions(torch.randint(1, 20, (4, 6)), torch.tensor([6, 3, 1, 2]))
    tags = model.encode_tags(torch.randn(4, 6))
    for out in (images, captions, tags):
        assert out.shape == (4, 8)
        assert torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-5)


def test_padding_does_not_change_a_caption_embedding() -> None:
    model = _model().eval()
    alone = model.encode_captions(torch.tensor([[5, 6, 7]]), torch.tensor([3]))
    padded = model.encode_captions(torch.tensor([[5, 6, 7, 0, 0, 0], [1, 2, 3, 4, 5, 6]]), torch.tensor([3, 6]))
    assert torch.allclose(alone[0], padded[0], atol=1e-6)  # last *valid* hidden state


def test_wrong_shapes_are_clear_errors() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"image features have shape \(4, 11\), the model expects \[batch, 10\]"):
        model.encode_images(torch.randn(4, 11))
    with pytest.raises(ValueError, match="at least one token"):
        model.encode_captions(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="no tag branch"):
        _model(tag_dim=0).encode_tags(torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"model\.embed_dim must be >= 1"):
        ModelConfig(image_dim=3, vocab_size=5, embed_dim=0)

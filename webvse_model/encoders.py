"""The three branches of the joint embedding (Mithun et al. 2018, Sec. 3).

* image: precomputed CNN features (2048-d for ResNet-152, any V) -> two FC -> D
* sentence: word embedding (300) -> GRU -> last valid hidden state -> FC -> D
* tag: mean word vector of an image's tags (V_t) -> two FC -> D

Every branch ends L2-normalised, so a dot product in the joint space is the cosine
similarity the ranking loss and the metrics work on.
"""

from __future__ import annotations

import threading

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from storage.errors import InputError
from webvse_model.settings import ModelConfig


def l2_normalise(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise unit length; ``eps`` keeps an all-zero row finite instead of NaN."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def _check_dim(name: str, x: torch.Tensor, expected: int) -> None:
    if x.dim() != 2 or x.shape[1] != expected:
        raise InputError(f"{name} have shape {tuple(x.shape)}, the model expects [batch, {expected}]")


class TwoLayerProjection(nn.Module):
    """FC -> ReLU -> FC -> L2: the projection shared by the image and tag branches."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, name: str) -> None:
        super().__init__()
        self.in_dim, self.name = in_dim, name
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_dim(self.name, x, self.in_dim)
        return l2_normalise(self.net(x))


class ImageEncoder(TwoLayerProjection):
    """Precomputed CNN features -> joint space."""

    def __init__(self, feature_dim: int, hidden_dim: int, embed_dim: int) -> None:
        super().__init__(feature_dim, hidden_dim, embed_dim, "image features")


class TagEncoder(TwoLayerProjection):
    """Mean word vector of an image's tags -> joint space."""

    def __init__(self, tag_dim: int, hidden_dim: int, embed_dim: int) -> None:
        super().__init__(tag_dim, hidden_dim, embed_dim, "tag vectors")


class SentenceEncoder(nn.Module):
    """Token ids -> word embedding -> GRU -> last valid hidden state -> FC -> L2."""

    def __init__(self, vocab_size: int, word_dim: int, gru_hidden: int, embed_dim: int, num_layers: int = 1) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.gru = nn.GRU(word_dim, gru_hidden, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(gru_hidden, embed_dim)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``tokens [B, T]`` padded with 0, ``lengths [B]`` (>= 1) -> ``[B, D]``."""
        if tokens.dim() != 2 or lengths.shape != tokens.shape[:1]:
            raise InputError(f"tokens {tuple(tokens.shape)} and lengths {tuple(lengths.shape)} do not match")
        if bool((lengths < 1).any()):
            raise InputError("every caption needs at least one token")
        packed = pack_padded_sequence(self.embedding(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, hidden = self.gru(packed)  # hidden[-1] is the state after each sequence's own last token
        return l2_normalise(self.fc(hidden[-1]))


class JointEmbedding(nn.Module):
    """Image, sentence and (optional) tag branches into one D-dimensional space."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.image = ImageEncoder(config.image_dim, config.hidden_dim, config.embed_dim)
        self.sentence = SentenceEncoder(
            config.vocab_size, config.word_dim, config.gru_hidden, config.embed_dim, config.gru_layers
        )
        self.tag = TagEncoder(config.tag_dim, config.hidden_dim, config.embed_dim) if config.tag_dim > 0 else None

    def encode_images(self, features: torch.Tensor) -> torch.Tensor:
        return self.image(features)

    def encode_captions(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.sentence(tokens, lengths)

    def encode_tags(self, tag_vectors: torch.Tensor) -> torch.Tensor:
        if self.tag is None:
            raise InputError("this model has no tag branch (model.tag_dim = 0)")
        return self.tag(tag_vectors)


_SEEDING = threading.Lock()


def seeded_model(config: ModelConfig, seed: int) -> JointEmbedding:
    """A run's initial weights: a function of ``(config, seed)`` alone, also when runs start at
    once in threads of one process. The layers draw from torch's global RNG, so it is borrowed
    under a lock, seeded, and given back as it was (training itself never draws from it: batch
    order comes from numpy, seeded per epoch, and the model has no dropout)."""
    with _SEEDING, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return JointEmbedding(config)

"""Embedding whole splits with a trained model, and evaluating them.

Shared by validation during training, the ``evaluate`` step and text search, so that
all three embed exactly the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from webvse_model.data import CaptionedImages
from webvse_model.encoders import JointEmbedding
from webvse_model.metrics import RetrievalMetrics, evaluate_embeddings


@torch.inference_mode()
def embed_images(model: JointEmbedding, features: np.ndarray, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """``[N, V]`` CNN features -> ``[N, D]`` joint-space embeddings (on the CPU)."""
    model.eval()
    out = [
        model.encode_images(torch.from_numpy(features[s : s + batch_size]).to(device)).float().cpu()
        for s in range(0, len(features), batch_size)
    ]
    return torch.cat(out)


@torch.inference_mode()
def embed_captions(
    model: JointEmbedding, tokens: np.ndarray, lengths: np.ndarray, device: torch.device, batch_size: int = 1024
) -> torch.Tensor:
    """Padded token ids ``[M, T]`` + lengths ``[M]`` -> ``[M, D]`` embeddings (on the CPU)."""
    model.eval()
    out = []
    for s in range(0, len(tokens), batch_size):
        lens = lengths[s : s + batch_size]
        toks = torch.from_numpy(np.ascontiguousarray(tokens[s : s + batch_size, : int(lens.max())])).to(device)
        out.append(model.encode_captions(toks, torch.from_numpy(lens)).float().cpu())
    return torch.cat(out)


def embed_split(model: JointEmbedding, data: CaptionedImages, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and caption embeddings of a whole split."""
    return embed_images(model, data.features, device), embed_captions(model, data.tokens, data.lengths, device)


def evaluate_split(model: JointEmbedding, data: CaptionedImages, captions_per_image: int = 5) -> RetrievalMetrics:
    """Metrics of ``model`` on the whole of ``data`` (captions grouped ``k`` per image): validation
    and promotion. The standard protocols (COCO 1K folds, 5K) run on embeddings: see
    :func:`webvse_model.metrics.run_protocol` and the evaluate step."""
    data.check_grouped(captions_per_image)
    device = next(model.parameters()).device
    images, captions = embed_split(model, data, device)
    return evaluate_embeddings(images, captions, captions_per_image)

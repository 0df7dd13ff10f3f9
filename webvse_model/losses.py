"""Bidirectional hinge ranking loss on cosine similarity (the paper's Eq. 1 and 2).

For a batch of matching pairs ``(image_i, text_i)`` with ``s(i, j) = <image_i, text_j>``::

    vse   (Eq. 1): sum_i sum_{j neg} [m - s(i,i) + s(i,j)]_+ + [m - s(i,i) + s(j,i)]_+
    vse++ (Eq. 2): sum_i max_{j neg} [m - s(i,i) + s(i,j)]_+ + max_{j neg} [m - s(i,i) + s(j,i)]_+

summed over the batch as in the VSE++ code. "text" is a sentence (L_IS) or an image's
tag vector (L_IT); the same function serves both. When several rows of a batch show
the same image (its several captions), those rows are positives of one another and are
never counted as negatives: pass ``image_ids``.
"""

from __future__ import annotations

import torch

from storage.errors import InputError
from webvse_model.settings import LOSS_VARIANTS, LossVariant


def ranking_loss(
    images: torch.Tensor,
    texts: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    margin: float = 0.2,
    variant: LossVariant = "vse++",
) -> torch.Tensor:
    """Hinge ranking loss of L2-normalised ``images [B, D]`` vs ``texts [B, D]``, row i matching row i."""
    if variant not in LOSS_VARIANTS:
        raise InputError(f"loss variant must be one of {LOSS_VARIANTS}, got {variant!r}")
    if images.shape != texts.shape or images.dim() != 2:
        raise InputError(f"images {tuple(images.shape)} and texts {tuple(texts.shape)} must both be [batch, D]")
    scores = images @ texts.t()
    positives = scores.diagonal()
    # row i: image i against every text j; column j: text j against every image i
    cost_text = (margin + scores - positives.unsqueeze(1)).clamp(min=0)
    cost_image = (margin + scores - positives.unsqueeze(0)).clamp(min=0)
    if image_ids is None:
        not_negative = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    else:
        if image_ids.shape != (scores.shape[0],):
            raise InputError(f"image_ids must be [batch]={scores.shape[0]}, got {tuple(image_ids.shape)}")
        not_negative = image_ids.unsqueeze(1) == image_ids.unsqueeze(0)
    cost_text = cost_text.masked_fill(not_negative, 0.0)
    cost_image = cost_image.masked_fill(not_negative, 0.0)
    if variant == "vse++":
        return cost_text.max(dim=1).values.sum() + cost_image.max(dim=0).values.sum()
    return cost_text.sum() + cost_image.sum()

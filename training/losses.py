"""The contrastive objective every itir trainer shares."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_infonce(logits: torch.Tensor) -> torch.Tensor:
    """CLIP's loss on a [B, B] similarity matrix whose diagonal holds the true pairs: each
    row against every column and each column against every row, in-batch negatives."""
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

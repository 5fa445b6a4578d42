"""Content digests that name weights exactly, so an index is never searched with other ones."""

from __future__ import annotations

import hashlib

import torch


def tensor_digest(state: dict[str, torch.Tensor], n: int = 12) -> str:
    """A digest of the tensors themselves (names, shapes, dtypes, values), so re-saving the
    same weights in another file layout keeps their identity."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:n]

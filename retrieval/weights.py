"""Content digests that name weights exactly, so an index is never searched with other ones."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def file_digest(path: str | Path, n: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def tensor_digest(state: dict[str, torch.Tensor], n: int = 12) -> str:
    """A digest of the tensors themselves (names, shapes, dtypes, values), so re-saving the
    same weights in another file layout keeps their identity."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:n]

"""Prototype routing: which domains' adapters an image should be embedded with.

What tells domains apart is the look of an image, not its content. The routing feature is
a style embedding: the Gram matrix of the frozen base tower's first-stage feature maps (the
classic style representation: which low-level filters fire together, wherever they fire)
and a few multi-scale image statistics (high-frequency energy at three scales, saturation,
brightness extremes), standardised by the base domain's spread.

One mean per domain is not enough: within a domain the look varies with the content (a
sketch of a white scene looks unlike a sketch of a black one), and one centroid per domain
routed only about half of the world's validation images right. So each domain keeps a few
prototypes, the k-means centroids of its training features, and an image's distance to a
domain is its distance to the nearest of them (mean squared difference per feature).

Routing weights are a softmax over negative distances divided by a temperature; weights
below `keep` times the largest are dropped and the rest renormalised. Dropping by ratio
makes routing local: adding a domain that an image is far from leaves that image's
weights, and so its embedding, exactly as they were.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from retrieval.world_encoder import ImageTower


@torch.no_grad()
def style_features(tower: ImageTower, pixels: torch.Tensor) -> torch.Tensor:
    """uint8-range RGB [B,3,S,S] -> [B, F] style embedding (see the module docstring)."""
    device = next(tower.parameters()).device
    x = pixels.float().to(device)
    if x.shape[-1] != tower.image_size:
        x = F.interpolate(x, size=tower.image_size, mode="bilinear", antialias=True,
                          align_corners=False)
    maps = tower.stages[0](x / 127.5 - 1.0).flatten(2)
    maps = maps - maps.mean(2, keepdim=True)
    gram = maps @ maps.transpose(1, 2) / maps.shape[2]
    upper = torch.triu_indices(gram.shape[1], gram.shape[1], device=device)
    return torch.cat([gram[:, upper[0], upper[1]], image_statistics(x / 255.0)], 1).cpu()


def image_statistics(x: torch.Tensor) -> torch.Tensor:
    """[B,3,S,S] in [0,1] -> [B, 15]: how much fine detail there is at three scales (mean,
    spread and share of pixels with local contrast), how colourful, how bright, and how
    much is near white or near black."""
    out = []
    for scale in (1, 2, 4):
        y = F.avg_pool2d(x, scale) if scale > 1 else x
        detail = (y - F.avg_pool2d(y, 3, 1, 1, count_include_pad=False)).abs().mean(1)
        out += [detail.mean((1, 2)), detail.std((1, 2)), (detail > 0.02).float().mean((1, 2))]
    brightest, darkest = x.max(1).values, x.min(1).values
    saturation = brightest - darkest
    out += [saturation.mean((1, 2)), saturation.std((1, 2)), brightest.mean((1, 2)),
            brightest.std((1, 2)), (darkest > 0.9).float().mean((1, 2)),
            (brightest < 0.15).float().mean((1, 2))]
    return torch.stack(out, 1)


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """k centroids of the rows of `x` (Lloyd's algorithm, seeded: the same data, the same
    prototypes)."""
    k = min(k, len(x))
    centroids = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]]
    for _ in range(iters):
        nearest = torch.cdist(x, centroids).argmin(1)
        for j in range(k):
            members = x[nearest == j]
            if len(members):
                centroids[j] = members.mean(0)
    return centroids


@dataclass
class Router:
    """Prototypes by domain name, plus the fixed standardisation and routing settings."""

    centre: list[float]  # standardisation of features, fixed by the base domain
    spread: list[float]
    prototypes: dict[str, list[list[float]]] = field(default_factory=dict)  # k per domain
    temperature: float = 0.5
    keep: float = 0.05
    per_domain: int = 32  # prototypes per domain

    def __post_init__(self):
        self._cache: tuple | None = None  # the lists above as tensors, built on first use

    @classmethod
    def for_base(cls, name: str, features: torch.Tensor, temperature: float = 0.5,
                 keep: float = 0.05, per_domain: int = 32) -> Router:
        features = features.float().cpu()
        router = cls(features.mean(0).tolist(), (features.std(0) + 1e-4).tolist(),
                     temperature=temperature, keep=keep, per_domain=per_domain)
        router.add(name, features)
        return router

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        if self._cache is None:
            self._cache = (torch.tensor(self.centre), torch.tensor(self.spread),
                           [torch.tensor(self.prototypes[n]) for n in self.names])
        return self._cache

    def _standard(self, features: torch.Tensor) -> torch.Tensor:
        centre, spread, _ = self._tensors()
        return (features.float().cpu() - centre) / spread

    def add(self, name: str, features: torch.Tensor) -> None:
        self.prototypes[name] = kmeans(self._standard(features), self.per_domain).tolist()
        self._cache = None

    def remove(self, name: str) -> None:
        del self.prototypes[name]
        self._cache = None

    @property
    def names(self) -> list[str]:
        return list(self.prototypes)

    def weights(self, features: torch.Tensor) -> torch.Tensor:
        """Routing weights [B, domains] (in the order the domains were added)."""
        z = self._standard(features)
        # Written out rather than torch.cdist, whose matrix-product shortcut for large batches
        # would make an image's weights depend on what it is batched with.
        dist = torch.stack([((z[:, None, :] - protos[None]) ** 2).mean(-1).min(1).values
                            for protos in self._tensors()[2]], 1)
        logits = -dist / self.temperature
        # exp(logit - max) needs no normaliser over all domains, so an added domain that an
        # input is far from leaves its kept weights bit for bit as they were.
        rel = torch.exp(logits - logits.max(1, keepdim=True).values)
        rel = torch.where(rel >= self.keep, rel, 0.0)
        return rel / rel.sum(1, keepdim=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({k: v for k, v in self.__dict__.items()
                                          if not k.startswith("_")}))

    @classmethod
    def load(cls, path: str | Path) -> Router:
        return cls(**json.loads(Path(path).read_text()))

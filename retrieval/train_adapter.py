"""Train image towers against fixed text embeddings: a base tower, a domain adapter, or a
full fine-tune (the continual-learning baselines).

The text side never changes in continual learning (texts carry no domain), so every text
is embedded once by the shipped world encoder and the image side learns to meet it:
symmetric InfoNCE over in-batch negatives at the shipped encoder's temperature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.adapters import AdapterConfig, DomainAdapter, RoutedImageTower
from retrieval.world_encoder import ImageTower
from training import TrainConfig, clear_checkpoints, symmetric_infonce, train


@dataclass
class DomainSet:
    """One domain's split: images and the fixed embeddings of texts describing them."""

    name: str
    images: torch.Tensor  # [N, 3, S, S] uint8
    text_embeddings: torch.Tensor  # [T, D] float32, L2-normalised
    text_scene: torch.Tensor  # [T] which image each text describes

    def __len__(self) -> int:
        return len(self.images)

    def recall(self, image_emb: torch.Tensor, ks: tuple[int, ...] = (1, 10), digits: int = 2
               ) -> dict[str, float]:
        """Text->image R@k in percent: each text's own image among `image_emb` [N, D], the
        embeddings of this set's images."""
        scores = self.text_embeddings @ image_emb.T
        own = scores[torch.arange(len(scores)), self.text_scene]
        rank = (scores > own[:, None]).sum(1)
        return {f"R@{k}": round(100 * (rank < k).float().mean().item(), digits) for k in ks}


@dataclass
class TowerTrainConfig(TrainConfig):
    steps: int = 300
    lr: float = 1e-3
    warmup: int = 30
    weight_decay: float = 0.01
    batch_size: int = 128
    logit_scale: float = 50.0  # fixed; the shipped encoder's learnt exp(logit_scale) is ~50
    log_every: int = 25
    checkpoint_every: int = 100


def batches(sets: list[DomainSet], shares: list[float], batch_size: int
            ) -> Callable[[torch.Generator], dict[str, torch.Tensor]]:
    """Each batch draws about `shares[i]` of its images from `sets[i]`, distinct images,
    each with one of its texts at random."""
    counts = [max(1, round(s * batch_size)) for s in shares]

    def sample(gen: torch.Generator) -> dict[str, torch.Tensor]:
        images, texts = [], []
        for ds, n in zip(sets, counts):
            scenes = torch.randperm(len(ds), generator=gen)[:n]
            pick = torch.randint(0, 1 << 30, (len(scenes),), generator=gen)
            for s, r in zip(scenes.tolist(), pick.tolist()):
                own = (ds.text_scene == s).nonzero().flatten()
                texts.append(ds.text_embeddings[own[r % len(own)]])
            images.append(ds.images[scenes])
        return {"images": torch.cat(images).float(), "texts": torch.stack(texts)}

    return sample


def contrastive_loss(embed: Callable[[torch.Tensor], torch.Tensor], scale: float):
    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return symmetric_infonce(scale * embed(batch["images"]) @ batch["texts"].T)
    return loss


def train_tower(tower: ImageTower, sets: list[DomainSet], shares: list[float],
                cfg: TowerTrainConfig, out: str | Path | None = None, *,
                resume: bool = False, desc: str = "tower") -> ImageTower:
    """Train every weight of `tower` (from scratch or fine-tuning) on a mix of domains."""
    def embed(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(tower(x), dim=-1)

    tower.requires_grad_(True)
    train(tower, batches(sets, shares, cfg.batch_size), contrastive_loss(embed, cfg.logit_scale),
          cfg, out, resume=resume, desc=desc)
    if out is not None:
        clear_checkpoints(out)
    return tower.eval()


def train_adapter(base: ImageTower, ds: DomainSet, cfg: TowerTrainConfig, rank: int = 8,
                  base_identity: str = "", out: str | Path | None = None, *,
                  resume: bool = False) -> DomainAdapter:
    """A new LoRA adapter for `ds`'s domain on the frozen `base`; the base is not changed."""
    torch.manual_seed(cfg.seed)
    adapter = DomainAdapter(AdapterConfig(ds.name, rank=rank, base=base_identity), base)
    routed = RoutedImageTower(base, [adapter])

    def embed(x: torch.Tensor) -> torch.Tensor:
        return routed(x, torch.ones(len(x), 1, device=x.device))

    train(routed, batches([ds], [1.0], cfg.batch_size), contrastive_loss(embed, cfg.logit_scale),
          cfg, out, resume=resume, desc=f"adapter {ds.name}")
    routed.detach()
    if out is not None:
        clear_checkpoints(out)
    return adapter.eval()

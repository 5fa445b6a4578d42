"""Train ADaFuSE on cached dialog embeddings (encoders and generator frozen).

Each example is one dialog at a random round 0..R-1: its text embedding t, the embedding g
of the pseudo-image drawn from that round's query, and its target image's embedding x. The
head fuses (t, g) into q and is trained with symmetric InfoNCE between q and x against the
other targets in the batch, temperature from the head's own logit scale. Every embedding is
precomputed (evaluation/dialog_set.py), so a step is a few small matrix products and the
run takes minutes on a CPU; the pseudo-images were the expensive part.

Model selection: every `eval_every` steps the caller's `validate` scores the head (its EMA
weights; evaluation/train_fusion.py ranks validation targets by the ChatIR protocol) and the
best-scoring weights are kept.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusion.adafuse import ADaFuSE, ADaFuSEConfig, ADaFuSEHead
from training.loop import TrainConfig, train
from training.losses import symmetric_infonce

# validate(fusion) -> (score, higher is better; what to log)
Validate = Callable[[ADaFuSE], tuple[float, dict]]

MAX_LOGIT_SCALE = math.log(100.0)  # as CLIP: a temperature below 0.01 only destabilises


@dataclass
class FusionTrainConfig(TrainConfig):
    # DESIGN.md: AdamW, lr 5e-5, weight decay 0.05, warm-up then cosine; plus the authors'
    # gradient clipping and EMA of the head's weights.
    steps: int = 4000
    batch_size: int = 256
    lr: float = 5e-5
    warmup: int = 200
    weight_decay: float = 0.05
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999


def fusion_batches(text: np.ndarray, image: np.ndarray, target: np.ndarray, batch_size: int):
    """Sampler for the shared loop over t [N, R, D], g [N, R, D] and the targets' image
    embeddings x [N, D]: distinct dialogs (so in-batch negatives are other targets), each at
    a uniformly random round."""
    t, g, x = (torch.from_numpy(np.asarray(a, np.float32)) for a in (text, image, target))
    n, rounds = t.shape[:2]
    size = min(batch_size, n)

    def sample(gen: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.randperm(n, generator=gen)[:size]
        r = torch.randint(0, rounds, (size,), generator=gen)
        return {"t": t[ids, r], "g": g[ids, r], "x": x[ids]}

    return sample


def fusion_loss(head: ADaFuSEHead, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    q, _, _ = head(batch["t"], batch["g"])
    return symmetric_infonce(head.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * q @ batch["x"].T)


def train_adafuse(text: np.ndarray, image: np.ndarray, target: np.ndarray,
                  model_cfg: ADaFuSEConfig, cfg: FusionTrainConfig, validate: Validate,
                  out: str | Path | None = None, *, resume: bool = False
                  ) -> tuple[ADaFuSE, list[dict], dict]:
    """Train a head on (t, g, x); return it with the best validation weights, the log, and
    {"score", "step", "details"} of that validation."""
    torch.manual_seed(cfg.seed)
    head = ADaFuSEHead(model_cfg)
    best: dict = {"score": -math.inf}

    def evaluate(model: ADaFuSEHead, step: int) -> dict:
        score, details = validate(ADaFuSE(model))
        if score > best["score"]:
            best.update(score=score, step=step, details=details,
                        state=copy.deepcopy(model.state_dict()))
        return {"val_score": round(score, 3), **details}

    log = train(head, fusion_batches(text, image, target, cfg.batch_size), fusion_loss, cfg,
                out, resume=resume, evaluate=evaluate, desc="train ADaFuSE")
    if "state" in best:
        head.load_state_dict(best.pop("state"))
    return ADaFuSE(head.eval()), log, best

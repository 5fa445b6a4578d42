"""Train ADaFuSE on cached dialog embeddings (encoders and generator frozen).

Each example is one dialog at a random round 0..R-1: its text embedding t, the embedding g
of the pseudo-image drawn from that round's query, and its target image's embedding x. The
head fuses (t, g) into q and is trained with symmetric InfoNCE between q and x against the
other targets in the batch, temperature from the head's own logit scale. Every embedding is
precomputed (evaluation/dialog_set.py), so a step is a few small matrix products and the
run takes minutes on a CPU; the pseudo-images were the expensive part.

Where we deliberately differ from DESIGN.md's objective: the *text hinge* adds
`text_hinge * mean(relu(CE(q) - CE(t)))`, per example how far fusing in the pseudo-image
raises the query-side InfoNCE above the text query's own. Under InfoNCE's batch mean, gains
on some examples pay for losses on others: on the world the plain head (gate lambda 0.85 ->
0.82 over the rounds) ranked the target worse than text-only for 41% of test dialogs at
round 2, where the drawing is still vague. The hinge charges the losses alone, which pulls
the query towards the text wherever the image costs more than it brings (the gate rose by
about 0.06 at every round; it did not learn to tell helpful drawings from harmful ones).
It shapes q only: the temperature stays InfoNCE's to learn. `text_hinge = 0` is DESIGN.md's
loss. Measured in docs/BENCHMARKS.md ("Fusion on world dialogs").

Given the training corpus (`corpus`, every image the training targets were drawn from), the
hinge compares the two queries' cross-entropy over that whole corpus rather than over the
batch. The harm the hinge is there to charge is a target falling behind its near-duplicates
in a large gallery, and 255 random other targets rarely include one: over the batch, a
query nudged off the text costs almost nothing, over 10,000 images it costs ranks. InfoNCE
itself keeps DESIGN.md's in-batch negatives.

Model selection: every `eval_every` steps the caller's `validate` scores the head (its EMA
weights; evaluation/train_fusion.py ranks validation targets by the ChatIR protocol) and the
best-scoring weights are kept.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import PartialState

from fusion.adafuse import ADaFuSE, ADaFuSEConfig
from fusion.adafuse_head import ADaFuSEHead
from training.loop import TrainConfig, train
from training.losses import symmetric_infonce

# validate(fusion) -> (score, higher is better; what to log)
Validate = Callable[[ADaFuSE], tuple[float, dict]]

MAX_LOGIT_SCALE = math.log(100.0)  # as CLIP: a temperature below 0.01 only destabilises
# The hinge's default weight, chosen on world validation (mean Hits@10 over rounds, 1,000
# dialogs): 0 gave 84.5, 3 gave 84.6, 10 gave 84.7 (text-only 84.4).
TEXT_HINGE = 10.0


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
    text_hinge: float = TEXT_HINGE  # weight of the text hinge (above); 0: DESIGN.md's loss


def fusion_batches(text: np.ndarray, image: np.ndarray, target: np.ndarray, batch_size: int,
                   target_ids: np.ndarray | None = None):
    """Sampler for the shared loop over t [N, R, D], g [N, R, D] and the targets' image
    embeddings x [N, D]: distinct dialogs (so in-batch negatives are other targets), each at
    a uniformly random round. With `target_ids` (each target's row in the training corpus)
    a batch says where its targets sit there, for the corpus-wide hinge."""
    t, g, x = (torch.from_numpy(np.asarray(a, np.float32)) for a in (text, image, target))
    rows = None if target_ids is None else torch.from_numpy(np.asarray(target_ids, np.int64))
    n, rounds = t.shape[:2]
    size = min(batch_size, n)

    def sample(gen: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.randperm(n, generator=gen)[:size]
        r = torch.randint(0, rounds, (size,), generator=gen)
        batch = {"t": t[ids, r], "g": g[ids, r], "x": x[ids]}
        if rows is not None:
            batch["target_id"] = rows[ids]
        return batch

    return sample


def fusion_loss(head: ADaFuSEHead, batch: dict[str, torch.Tensor], text_hinge: float = 0.0,
                corpus: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE of the fused queries against the batch's targets, plus the text
    hinge (module docstring) when `text_hinge` > 0: over the `corpus` [M, D] when given
    (the batch then has each target's row in it, `target_id`), else over the batch."""
    q, _, _ = head(batch["t"], batch["g"])
    scale = head.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    similarity = q @ batch["x"].T
    loss = symmetric_infonce(scale * similarity)
    if text_hinge:
        bar = scale.detach()  # the hinge compares rankings; the temperature is InfoNCE's
        if corpus is None:
            images, labels = batch["x"], torch.arange(len(q), device=q.device)
        else:
            images, labels = corpus.to(q.device), batch["target_id"]
        fused = F.cross_entropy(bar * q @ images.T, labels, reduction="none")
        text = F.cross_entropy(bar * batch["t"] @ images.T, labels, reduction="none")
        loss = loss + text_hinge * F.relu(fused - text).mean()
    return loss


def train_adafuse(text: np.ndarray, image: np.ndarray, target: np.ndarray,
                  model_cfg: ADaFuSEConfig, cfg: FusionTrainConfig, validate: Validate,
                  out: str | Path | None = None, *, resume: bool = False,
                  corpus: np.ndarray | None = None, target_ids: np.ndarray | None = None
                  ) -> tuple[ADaFuSE, list[dict], dict]:
    """Train a head on (t, g, x); return it with the best validation weights, the log, and
    {"score", "step", "details"} of that validation. With the training `corpus` [M, D] and
    each target's row in it (`target_ids`), the text hinge runs over the whole corpus."""
    if (corpus is None) != (target_ids is None):
        raise ValueError("the corpus-wide hinge needs both the corpus and the targets' rows")
    torch.manual_seed(cfg.seed)
    head = ADaFuSEHead(model_cfg)
    best: dict = {"score": -math.inf}

    def evaluate(model: ADaFuSEHead, step: int) -> dict:
        score, details = validate(model.fusion())
        if score > best["score"]:
            best.update(score=score, step=step, details=details,
                        state=copy.deepcopy(model.state_dict()))
        return {"val_score": round(score, 3), **details}

    # On the device the loop trains on, once: not copied there at every step.
    bank = (None if corpus is None else
            torch.from_numpy(np.asarray(corpus, np.float32)).to(PartialState().device))
    loss_fn = functools.partial(fusion_loss, text_hinge=cfg.text_hinge, corpus=bank)
    log = train(head, fusion_batches(text, image, target, cfg.batch_size, target_ids),
                loss_fn, cfg, out, resume=resume, evaluate=evaluate, desc="train ADaFuSE")
    if "state" in best:
        head.load_state_dict(best.pop("state"))
    return head.fusion(), log, best

"""Train the world dual encoder (image tower + text head) against the locked text tower.

Symmetric InfoNCE over in-batch negatives, one text per scene per step. A quarter of the
images are shrunk to 32x32 first: generated pseudo-images are 32x32, and the image tower
has to embed them next to the real 64x64 gallery images.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from retrieval.world_encoder import WorldDualEncoder, WorldEncoderConfig
from world.corpus import Corpus


@dataclass
class EncoderTrainConfig:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    low_res_fraction: float = 0.25
    seed: int = 0
    log_every: int = 50


def lr_at(step: int, cfg: EncoderTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def shrink(images: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Round-trip a random `fraction` of the batch through 32x32."""
    pick = torch.rand(len(images), generator=gen) < fraction
    if not pick.any():
        return images.float()
    out = images.float().clone()
    small = F.interpolate(out[pick], size=32, mode="bilinear", antialias=True)
    out[pick] = F.interpolate(small, size=images.shape[-1], mode="bilinear")
    return out


@torch.no_grad()
def recall_at(model: WorldDualEncoder, corpus: Corpus, kind: int = 0,
              ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Text->image recall over the corpus' scenes, using one text of `kind` per scene."""
    model.eval()
    img = torch.cat([model.encode_image(corpus.images[i:i + 256])
                     for i in range(0, len(corpus.images), 256)])
    ids = torch.nonzero(corpus.text_kind == kind).squeeze(1)
    txt = torch.cat([model.encode_text(*corpus.batch_states(ids[i:i + 256]))
                     for i in range(0, len(ids), 256)])
    target = corpus.text_scene[ids]
    scores = txt @ img.T
    rank = (scores > scores.gather(1, target[:, None])).sum(1)
    return {f"R@{k}": float((rank < k).float().mean()) for k in ks}


def train_encoder(corpus: Corpus, model_cfg: WorldEncoderConfig, cfg: EncoderTrainConfig,
                  val: Corpus | None = None, log_path: str | Path | None = None,
                  ) -> tuple[WorldDualEncoder, list[dict]]:
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = WorldDualEncoder(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    texts_of: dict[int, list[int]] = {}
    for t, s in enumerate(corpus.text_scene.tolist()):
        texts_of.setdefault(s, []).append(t)
    scenes = list(texts_of)
    log = []
    log_file = open(log_path, "a") if log_path else None
    start = time.time()
    for step in tqdm(range(cfg.steps), desc="train encoder", unit="step"):
        model.train()
        batch = rng.sample(scenes, cfg.batch_size)
        text_ids = torch.tensor([rng.choice(texts_of[s]) for s in batch])
        images = shrink(corpus.images[batch], cfg.low_res_fraction, gen)
        img = model.encode_image(images)
        txt = model.encode_text(*corpus.batch_states(text_ids))
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        labels = torch.arange(len(batch))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            entry = {"step": step + 1, "loss": round(loss.item(), 4),
                     "seconds": round(time.time() - start, 1)}
            if val is not None and ((step + 1) % (cfg.log_every * 10) == 0
                                    or step + 1 == cfg.steps):
                entry["val_full_caption"] = recall_at(model, val)
            log.append(entry)
            if log_file:
                log_file.write(json.dumps(entry) + "\n")
                log_file.flush()
    model.eval()
    return model, log


def save_encoder(model: WorldDualEncoder, path: str | Path, extra: dict | None = None) -> None:
    meta = {"config": json.dumps(model.cfg.to_dict()), **(extra or {})}
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={k: str(v) for k, v in meta.items()})


MODEL_CARD = """# world encoder

A dual encoder for the itir world: the locked all-MiniLM-L6-v2 text tower (not stored here)
with a trained one-layer attention head, and a {image_params:.2f}M-parameter CNN image tower
trained from scratch. Embeddings are {dim}-d and L2-normalised.

- Data: {scenes} world train scenes (seeds {first}..{last}), each with a full caption and a
  partial caption or 1-4-round dialog prefix; images {size}x{size}, a quarter shrunk to 32x32.
- Training: {steps} steps, batch {batch}, AdamW lr {lr}, cosine; symmetric InfoNCE with a
  learnable temperature; seed {seed}.
- Wall time: {minutes:.1f} min on {threads} CPU thread(s).
- Validation ({val} val scenes, full caption, text->image): {val_metrics}
- Test numbers: docs/BENCHMARKS.md.

Reproduce: `{command}`
"""


def reproduce(out: str | Path, scenes: int, steps: int, cache_dir: str | Path,
              batch_size: int = 128, val_scenes: int = 1000, seed: int = 0) -> dict:
    """Build (or reuse) the corpora, train, write `out` (safetensors) and its model card."""
    from retrieval.text_tower import TextTower
    from world.corpus import cached_corpus

    model_cfg = WorldEncoderConfig()
    tower = TextTower()
    corpus = cached_corpus(scenes, "train", tower, model_cfg.image_size, cache_dir)
    val = cached_corpus(val_scenes, "val", tower, model_cfg.image_size, cache_dir)
    del tower
    cfg = EncoderTrainConfig(steps=steps, batch_size=batch_size, seed=seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    model, log = train_encoder(corpus, model_cfg, cfg, val=val,
                               log_path=out.with_suffix(".log.jsonl"))
    minutes = (time.time() - start) / 60
    metrics = recall_at(model, val)
    save_encoder(model, out, {"scenes": scenes, "steps": steps, "val": json.dumps(metrics)})
    card = MODEL_CARD.format(
        image_params=sum(p.numel() for p in model.image.parameters()) / 1e6,
        dim=model_cfg.embed_dim, scenes=scenes, first=0, last=scenes - 1,
        size=model_cfg.image_size, steps=steps, batch=batch_size, lr=cfg.lr, seed=seed,
        minutes=minutes, threads=torch.get_num_threads(), val=val_scenes,
        val_metrics=", ".join(f"{k} {v:.3f}" for k, v in metrics.items()),
        command=f"itir train-encoder --scenes {scenes} --steps {steps} --out {out}")
    out.with_suffix(".md").write_text(card)
    from evaluation.plots import training_curve

    training_curve(out.with_suffix(".log.jsonl"), out.with_suffix(".loss.png"),
                   "world encoder: InfoNCE loss")
    return metrics

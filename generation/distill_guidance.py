"""Guidance distillation: a UNet that draws in one pass what the guidance pair draws in two.

Classifier-free guidance runs the UNet twice per step, on the layout and on the empty layout,
and extrapolates: v = v_empty + w (v_layout - v_empty). On a CPU the pair is nearly all of a
pseudo-image's time (batch 2 costs about twice batch 1 on ONNX Runtime: 56 against 30 ms a
step on two AVX2 cores). Here a student, started from the teacher's own weights, learns to give
that extrapolated velocity from the layout alone at one fixed w (Meng et al. 2023, "On
Distillation of Guided Diffusion Models", stage one; we keep w fixed instead of feeding it in,
because the app draws at one w). The student is then sampled without the empty half:
`WorldGeneratorPipeline` reads `distilled_guidance` from its config.

Where it differs from the paper, on purpose: the noisy inputs are the training renders noised
to a timestep (not the teacher's own trajectories), and three quarters of the timesteps are the
ones the few-step sampler visits (1-8 steps, trailing spacing): the student is only ever asked
there, so that is where its capacity goes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import PartialState
from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DConditionModel

from generation.train_world import GeneratorTrainConfig, generator_batches, parse_all
from generation.world_unet import sampling_scheduler, training_scheduler
from training import (
    TrainConfig,
    clear_checkpoints,
    run_facts,
    train,
    training_curve,
    write_model_card,
)
from training.loop import LOG_NAME, resolved_precision


@dataclass
class DistillConfig(TrainConfig):
    steps: int = 1400  # the shipped student's recipe (its card)
    lr: float = 2e-4  # the student starts where the teacher is: moderate moves
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.995
    log_every: int = 25
    eval_every: int = 250
    batch_size: int = 64
    guidance: float = 3.0
    sampler_share: float = 0.75  # of timesteps drawn from the few-step sampler's own


def sampler_timesteps(most_steps: int = 8) -> torch.Tensor:
    """Every timestep the app's sampler visits with 1..most_steps steps."""
    sched = sampling_scheduler()
    seen = set()
    for n in range(1, most_steps + 1):
        sched.set_timesteps(n)
        seen.update(int(t) for t in sched.timesteps)
    return torch.tensor(sorted(seen))


def distill_batches(base: Callable[[torch.Generator], dict], cfg: DistillConfig
                    ) -> Callable[[torch.Generator], dict]:
    """The generator's training batches, every layout kept, timesteps mostly the sampler's."""
    visited = sampler_timesteps()

    def sample(gen: torch.Generator) -> dict[str, torch.Tensor]:
        batch = base(gen)
        n = len(batch["t"])
        pick = visited[torch.randint(0, len(visited), (n,), generator=gen)]
        mine = torch.rand(n, generator=gen) < cfg.sampler_share
        batch["t"] = torch.where(mine, pick, batch["t"])
        return batch

    return sample


def guided_velocity(unet: UNet2DConditionModel, noisy: torch.Tensor, t: torch.Tensor,
                    spatial: torch.Tensor, slots: torch.Tensor, w: float) -> torch.Tensor:
    """What the sampler steps with: the guidance pair, extrapolated by w."""
    # Training passes a timestep per sample, the sampler one for the whole batch: take both.
    t = t.reshape(-1).expand(len(noisy))
    both = unet(torch.cat([torch.cat([noisy, spatial], 1),
                           torch.cat([noisy, torch.zeros_like(spatial)], 1)]),
                torch.cat([t, t]), encoder_hidden_states=torch.cat(
                    [slots, torch.zeros_like(slots)])).sample
    cond, empty = both.chunk(2)
    return empty + w * (cond - empty)


def distill_loss(teacher: UNet2DConditionModel, noise_sched: DDPMScheduler, w: float
                 ) -> Callable[[UNet2DConditionModel, dict], torch.Tensor]:
    """MSE between the student's one-pass velocity and the frozen teacher's guided one, on
    training images noised to the batch's timesteps."""

    def loss(student: UNet2DConditionModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0, noise, t = batch["x0"], batch["noise"], batch["t"]
        noisy = noise_sched.add_noise(x0, noise, t)
        with torch.no_grad():
            target = guided_velocity(teacher, noisy, t, batch["map"], batch["slots"], w)
        pred = student(torch.cat([noisy, batch["map"]], 1), t,
                       encoder_hidden_states=batch["slots"]).sample
        return F.mse_loss(pred.float(), target.float())

    return loss


def draw_for_gap(pipe: DiffusionPipeline, prompts: list[str], steps: int, w: float
                 ) -> np.ndarray:
    """`prompts` drawn from fixed noise (seed i for prompt i), as floats in [0, 1]."""
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    return pipe(prompts, num_inference_steps=steps, guidance_scale=w, generator=gens,
                output_type="np").images


def pixel_gap(teacher_images: np.ndarray, student_pipe: DiffusionPipeline,
              prompts: list[str], steps: int, w: float) -> float:
    """Mean absolute difference, in levels of 255, between what the teacher drew with the
    guidance pair (`draw_for_gap`) and what the student draws alone from the same noise."""
    return float(np.abs(teacher_images - draw_for_gap(student_pipe, prompts, steps, w))
                 .mean() * 255)


def gap_prompts(n: int = 32) -> list[str]:
    """What the pixel gap is measured on: val scenes' full captions and 5-round dialogs."""
    from world.captions import full_caption
    from world.dialogs import make_dialog, round_query
    from world.scene import sample_scene, split_seed

    scenes = [sample_scene(split_seed("val", i)) for i in range(n)]
    return [full_caption(s) if i % 2 else round_query(make_dialog(s), 5)
            for i, s in enumerate(scenes)]


MODEL_CARD = """# world generator, guidance distilled

The world generator of `{teacher}` with a UNet that draws in **one pass per step** what the
teacher draws with classifier-free guidance (two passes, w = {guidance}): half the UNet work
of every pseudo-image. The layout parser and the scheduler are the teacher's, unchanged.

- `unet/`: the teacher's {params:.2f}M-parameter UNet, trained further {steps} steps (batch
  {batch_size}, AdamW lr {lr}, {warmup} warm-up steps then cosine, gradient clipping
  {grad_clip}, EMA {ema_decay}, the saved weights) to output the teacher's guided velocity
  `v_empty + {guidance} (v_layout - v_empty)` from the layout alone (MSE); seed {seed}; final
  loss {final_loss:.5f}. Inputs: {scenes} world train scenes' renders (the teacher's corpus,
  six texts each), noised at a timestep that is {share:.0%} of the time one the few-step
  sampler visits and otherwise uniform (generation/distill_guidance.py).
- `model_index.json` says `distilled_guidance: {guidance}`, so the pipeline samples without
  the empty half and refuses any other guidance scale.
- Against the teacher: a mean pixel gap of **{final_gap:.2f}** levels of 255 on 32 val
  prompts, 5 steps, the same noise, both in fp32; during training (the log's `pixel_gap`,
  every {eval_every} steps, in the run's precision: {precision}) {gap}.
- Wall time: {minutes:.1f} min on {hardware}. Curve: `loss.png`; log under `train-distill/`.
- Fidelity and latency: docs/BENCHMARKS.md (`itir bench generator`).

`unet/model.onnx` is the same UNet traced for ONNX Runtime (`itir export-onnx`).
"""


def reproduce(teacher: str | Path, out: str | Path, scenes: int, steps: int,
              cache_dir: str | Path, batch_size: int = 64, seed: int = 0,
              resume: bool = False, guidance: float = 3.0,
              teacher_name: str | None = None) -> list[dict]:
    """Distil the pipeline folder `teacher` into `out` (a pipeline folder with the student
    UNet and its ONNX export, README.md, log, curve). The card names the teacher
    `teacher_name` (default: its path)."""
    from generation.onnx_unet import export_unet
    from generation.world_pipeline import WorldGeneratorPipeline
    from world.clause_corpus import cached_clause_corpus

    out, teacher_name = Path(out), teacher_name or str(teacher)
    cfg = DistillConfig(steps=steps, batch_size=batch_size, seed=seed, guidance=guidance)
    source = WorldGeneratorPipeline.from_pretrained(teacher)
    if source.config.get("distilled_guidance") is not None:
        raise ValueError(f"{teacher} is distilled already: distil the guided original")
    source.set_progress_bar_config(disable=True)
    size = source.unet.config.sample_size
    corpus = cached_clause_corpus(scenes, "train", source.text_tower, size, cache_dir)
    maps, slots = parse_all(source.layout, corpus)
    every_layout = GeneratorTrainConfig(batch_size=batch_size, condition_dropout=0.0)
    base = generator_batches(corpus, maps, slots, size, every_layout,
                             training_scheduler().config.num_train_timesteps)

    # The teacher runs every step beside the student: on the device accelerate trains on.
    device = PartialState().device
    source.to(device)
    teacher_unet = source.unet.eval().requires_grad_(False)
    student = copy.deepcopy(teacher_unet).train().requires_grad_(True)

    # The frozen teacher draws the same pictures at every evaluation: once is enough.
    prompts = gap_prompts()
    teacher_images = draw_for_gap(source, prompts, 5, guidance)

    def evaluate(unet: UNet2DConditionModel, step: int) -> dict:
        pupil = WorldGeneratorPipeline(source.layout, unet, source.scheduler,
                                       source.text_tower, distilled_guidance=guidance)
        pupil.set_progress_bar_config(disable=True)
        return {"pixel_gap": pixel_gap(teacher_images, pupil, prompts, 5, guidance)}

    log = train(student, distill_batches(base, cfg),
                distill_loss(teacher_unet, training_scheduler(), guidance), cfg,
                out / "train-distill", resume=resume, evaluate=evaluate,
                desc="distil guidance")
    student.eval().requires_grad_(False)
    # Measured again now that train() has taken off accelerate's mixed-precision wrapper: in
    # fp32, as the app draws on a CPU.
    final_gap = evaluate(student, cfg.steps)["pixel_gap"]
    WorldGeneratorPipeline(source.layout, student, source.scheduler, source.text_tower,
                           text_tower_id=source.config.text_tower_id,
                           distilled_guidance=guidance).save_pretrained(out)
    gaps = [(e["step"], e["pixel_gap"]) for e in log if "pixel_gap" in e]
    write_model_card(
        out / "README.md", MODEL_CARD,
        metadata={"license": "mit", "library_name": "diffusers",
                  "tags": ["itir", "text-to-image", "pixel-diffusion", "guidance-distillation"]},
        command=(f"itir distill-generator {teacher_name} --scenes {scenes} --steps {steps} "
                 f"--batch-size {batch_size} --guidance {guidance} --out {out}"),
        **run_facts(cfg, log), teacher=teacher_name, scenes=scenes, share=cfg.sampler_share,
        params=sum(p.numel() for p in student.parameters()) / 1e6,
        final_gap=final_gap, precision=_precision_name(cfg.mixed_precision),
        gap=(f"{gaps[0][1]:.2f} after {gaps[0][0]} steps, {gaps[-1][1]:.2f} at the end"
             if gaps else "not measured"))
    training_curve(out / "train-distill" / LOG_NAME, out / "loss.png",
                   "guidance distillation: MSE to the guided teacher")
    clear_checkpoints(out / "train-distill")
    export_unet(copy.deepcopy(student).to("cpu", torch.float32), out / "unet")
    return log


def _precision_name(setting: str) -> str:
    """What `TrainConfig.mixed_precision` came to on this machine, for the card."""
    resolved = resolved_precision(setting)
    return {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}.get(resolved, resolved)

import json
import re

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from generation.distill_guidance import (
    DistillConfig,
    distill_batches,
    distill_loss,
    guided_velocity,
    reproduce,
    sampler_timesteps,
)
from generation.spec import GenerationError
from generation.world import WorldGenerator
from generation.world_layout import MAP_CHANNELS
from generation.world_pipeline import WorldGeneratorPipeline
from generation.world_unet import TINY, build_unet, sampling_scheduler, training_scheduler
from training import train

PROMPTS = ["a red circle on a blue background", "a small green star in the top left"]


def draw(pipe, guidance: float, steps: int = 3):
    gens = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                output_type="np").images


class GuidedPair(torch.nn.Module):
    """A 'student' that is exactly what distillation aims at: the teacher's guided velocity."""

    def __init__(self, teacher: UNet2DConditionModel, w: float):
        super().__init__()
        self.teacher, self.w, self.config = teacher, w, teacher.config

    def forward(self, model_in, t, encoder_hidden_states):
        noisy, spatial = model_in[:, :3], model_in[:, 3:]
        v = guided_velocity(self.teacher, noisy, t, spatial, encoder_hidden_states, self.w)
        return type("Out", (), {"sample": v})


def test_the_distillation_target_is_what_the_guided_sampler_steps_with(tiny_world_pipeline):
    """Drawing with the target in one pass per step gives the teacher's guided image: the
    loss trains towards exactly what the pipeline does with the guidance pair."""
    teacher, _ = tiny_world_pipeline
    student = WorldGeneratorPipeline(teacher.layout, teacher.unet, teacher.scheduler,
                                     teacher.text_tower, distilled_guidance=2.0)
    student.set_progress_bar_config(disable=True)
    student.unet = GuidedPair(teacher.unet, 2.0)
    assert np.abs(draw(teacher, 2.0) - draw(student, 2.0)).max() < 1e-5


def test_a_distilled_pipeline_draws_one_pass_per_step_and_only_at_its_guidance(
        tiny_world_pipeline, tmp_path):
    teacher, _ = tiny_world_pipeline
    pipe = WorldGeneratorPipeline(teacher.layout, teacher.unet, sampling_scheduler(),
                                  teacher.text_tower, distilled_guidance=2.0)
    pipe.set_progress_bar_config(disable=True)
    batches = []
    hook = pipe.unet.register_forward_hook(lambda m, args, out: batches.append(len(args[0])))
    try:
        draw(pipe, 2.0, steps=3)
        assert batches == [len(PROMPTS)] * 3  # no empty-layout half
        batches.clear()
        draw(teacher, 2.0, steps=3)
        assert batches == [2 * len(PROMPTS)] * 3
    finally:
        hook.remove()
    with pytest.raises(ValueError, match="guidance 2.0 built in"):
        draw(pipe, 3.0)
    pipe.save_pretrained(tmp_path / "distilled")
    assert json.loads((tmp_path / "distilled" / "model_index.json").read_text())[
        "distilled_guidance"] == 2.0
    gen = WorldGenerator(tmp_path / "distilled", teacher.text_tower, steps=2, guidance=2.0)
    assert gen.generate(PROMPTS, seed=0)[0].size == (32, 32)
    with pytest.raises(GenerationError, match="cannot draw at 3.0.*generator.guidance"):
        WorldGenerator(tmp_path / "distilled", teacher.text_tower, guidance=3.0)


def test_distillation_batches_mostly_take_the_timesteps_the_app_samples_at():
    visited = sampler_timesteps()
    n = 20000

    def base(gen: torch.Generator) -> dict:
        return {"t": torch.randint(0, 1000, (n,), generator=gen), "map": torch.ones(n, 2)}

    batch = distill_batches(base, DistillConfig())(torch.Generator().manual_seed(0))
    share = torch.isin(batch["t"], visited).float().mean().item()
    # three quarters drawn from the visited set, and a few of the uniform rest land there too
    assert share == pytest.approx(0.75 + 0.25 * len(visited) / 1000, abs=0.01)
    assert torch.equal(batch["map"], torch.ones(n, 2))  # the layouts pass through untouched


def test_reproduce_writes_a_distilled_pipeline_the_app_draws_with(tiny_world_pipeline,
                                                                  text_tower, tmp_path):
    """The whole command on a tiny teacher: trains (EMA, evaluation hook), measures the gap,
    writes a complete card, clears checkpoints, exports ONNX; then the app loads the folder."""
    _, teacher = tiny_world_pipeline
    out = tmp_path / "distilled"
    log = reproduce(teacher, out, scenes=6, steps=4, cache_dir=tmp_path / "cache",
                    batch_size=4, guidance=2.0)
    assert log[-1]["step"] == 4 and log[-1]["pixel_gap"] >= 0
    card = (out / "README.md").read_text()
    assert "one pass per step" in card and "--steps 4 --batch-size 4 --guidance 2.0" in card
    assert not re.search(r"\{[a-z_]+\}", card)  # every fact filled in
    assert (out / "loss.png").is_file()
    assert not (out / "train-distill" / "checkpoints").exists()
    gen = WorldGenerator(out, text_tower, steps=2, guidance=2.0)
    assert gen.runtime == "onnx"  # the export matches the saved weights
    assert gen.generate(PROMPTS, seed=0)[0].size == (32, 32)
    with pytest.raises(ValueError, match="distilled already"):
        reproduce(out, tmp_path / "again", scenes=6, steps=4, cache_dir=tmp_path / "cache")


def test_distillation_steps_move_the_student_towards_the_guided_teacher():
    torch.manual_seed(0)
    teacher = build_unet(TINY).eval().requires_grad_(False)
    student = build_unet(TINY)
    student.load_state_dict(teacher.state_dict())
    data = torch.Generator().manual_seed(1)
    fixed = {"x0": torch.rand(8, 3, 32, 32, generator=data) * 2 - 1,
             "noise": torch.randn(8, 3, 32, 32, generator=data),
             "t": torch.randint(0, 1000, (8,), generator=data),
             "map": torch.rand(8, MAP_CHANNELS, 32, 32, generator=data),
             "slots": torch.randn(8, 12, TINY.cross_attention_dim, generator=data)}
    loss = distill_loss(teacher, training_scheduler(), 3.0)
    before = loss(student, fixed).item()
    weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = DistillConfig(steps=40, lr=2e-3, warmup=2, ema_decay=None, eval_every=1000)
    train(student, lambda gen: fixed, loss, cfg)
    with torch.no_grad():
        after = loss(student, fixed).item()
    assert after < 0.5 * before
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in weights.items())

"""A diffusers pipeline for the world generator: text -> layout -> 32x32 pseudo-image.

The text tower reads the prompt clause by clause, the layout parser turns its states into a
belief about the scene (generation/world_layout.py), and the UNet denoises conditioned on
that layout, with classifier-free guidance against an empty layout.

A saved pipeline is an ordinary diffusers folder (model_index.json, layout/, unet/,
scheduler/), so

    pipe = WorldGeneratorPipeline.from_pretrained("assets/world-generator")

works anywhere this class can be imported. The locked text tower is not stored in the
folder: it is a public model (all-MiniLM-L6-v2, 90 MB) that the app shares with the world
encoder. model_index.json names it in `text_tower_id`, a plain config value like Stable
Diffusion's `requires_safety_checker`, and loading fetches it from the offline package unless
an already-loaded tower is passed: `from_pretrained(folder, text_tower=tower)`.

The tower is deliberately not a pipeline component: a component would be saved into the
folder (or, being unsaveable, rewritten to null in the config with a warning). As a plain
attribute it is left where its owner placed it; `pipe.to(device)` moves the UNet, and the
tower's states follow the UNet to its device.

`pipe.onnx_unet` (None by default) may hold the same UNet on ONNX Runtime
(generation/onnx_unet.py); the denoising loop then calls it instead of the torch module,
which still owns the weights, the config and `save_pretrained`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from generation.world_layout import WorldLayoutParser, clause_states
from retrieval.text_tower import MINILM_HUB_ID, TextTower

if TYPE_CHECKING:
    from generation.onnx_unet import OnnxUNet


class WorldGeneratorPipeline(DiffusionPipeline):
    """Layout parser + UNet + few-step scheduler + the locked text tower."""

    def __init__(self, layout: WorldLayoutParser, unet: UNet2DConditionModel,
                 scheduler: SchedulerMixin, text_tower: TextTower | None = None,
                 text_tower_id: str = MINILM_HUB_ID, distilled_guidance: float | None = None):
        super().__init__()
        self.register_modules(layout=layout, unet=unet, scheduler=scheduler)
        # distilled_guidance: the UNet gives the guided velocity at this scale by itself
        # (generation/distill_guidance.py), so a step is one pass, not the guidance pair.
        self.register_to_config(text_tower_id=text_tower_id,
                                distilled_guidance=distilled_guidance)
        self.text_tower = (text_tower if text_tower is not None
                           else TextTower(text_tower_id))
        self.onnx_unet: OnnxUNet | None = None
        if self.text_tower.width != layout.config.text_width:
            raise ValueError(f"the layout parser reads {layout.config.text_width}-wide states "
                             f"({text_tower_id}); the text tower gives {self.text_tower.width}")
        if layout.config.width != unet.config.cross_attention_dim:
            raise ValueError(f"the UNet cross-attends {unet.config.cross_attention_dim}-wide "
                             f"slots; the layout parser gives {layout.config.width}")

    def condition(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The layout map [B, C, S, S] and slot states [B, K, W] for `prompts`."""
        states, mask, clause_ids = clause_states(self.text_tower, prompts)
        # diffusers' .device and .dtype walk every module (~4 ms each): a weight says the same.
        weight = next(self.unet.parameters())
        device, dtype = weight.device, weight.dtype
        layout_dtype = next(self.layout.parameters()).dtype
        layout = self.layout(states.to(device, layout_dtype), mask.to(device),
                             clause_ids.to(device))
        size = self.unet.config.sample_size
        return layout.spatial_map(size).to(dtype), layout.slots.to(dtype)

    def check_guidance(self, guidance_scale: float) -> None:
        """A distilled UNet draws at its one built-in scale: refuse any other."""
        built_in = self.config.get("distilled_guidance")
        if built_in is not None and guidance_scale != built_in:
            raise ValueError(
                f"this generator's UNet has guidance {built_in} built in (distilled) and "
                f"cannot draw at {guidance_scale}: draw at {built_in}, or use the guided "
                "pipeline it was distilled from (the shipped one: assets/world-generator)")

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_inference_steps: int = 8,
                 guidance_scale: float = 3.0,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 output_type: str = "pil") -> ImagePipelineOutput:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        self.check_guidance(guidance_scale)
        spatial, slots = self.condition(prompts)
        device, dtype = spatial.device, spatial.dtype
        guided = guidance_scale != 1.0 and self.config.get("distilled_guidance") is None
        if guided:  # the unconditional half: an empty layout (what training dropped to)
            spatial = torch.cat([spatial, torch.zeros_like(spatial)])
            slots = torch.cat([slots, torch.zeros_like(slots)])
        size = self.unet.config.sample_size
        x = randn_tensor((len(prompts), 3, size, size), generator=generator, device=device,
                         dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        x = x * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = self.scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
            model_in = torch.cat([model_in, spatial], dim=1)
            if self.onnx_unet is not None:
                out = self.onnx_unet(model_in, t, slots)
            else:
                out = self.unet(model_in, t, encoder_hidden_states=slots).sample
            if guided:
                cond, uncond = out.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            x = self.scheduler.step(out, t, x).prev_sample
        images = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).float().cpu().numpy()
        if output_type == "pil":
            images = self.numpy_to_pil(images)
        return ImagePipelineOutput(images=images)

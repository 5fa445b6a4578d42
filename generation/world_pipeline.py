"""A diffusers pipeline for the world generator: text -> 32x32 pseudo-image.

A saved pipeline is an ordinary diffusers folder (model_index.json, unet/, scheduler/), so

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
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from retrieval.text_tower import MINILM_HUB_ID, TextTower


class WorldGeneratorPipeline(DiffusionPipeline):
    """UNet + few-step scheduler + the locked text tower, with classifier-free guidance."""

    def __init__(self, unet: UNet2DConditionModel, scheduler: SchedulerMixin,
                 text_tower: TextTower | None = None, text_tower_id: str = MINILM_HUB_ID):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(text_tower_id=text_tower_id)
        self.text_tower = (text_tower if text_tower is not None
                           else TextTower(text_tower_id))
        if self.text_tower.width != unet.config.cross_attention_dim:
            raise ValueError(f"the UNet cross-attends {unet.config.cross_attention_dim}-wide "
                             f"states ({text_tower_id}); the text tower gives "
                             f"{self.text_tower.width}")
        self._empty: torch.Tensor | None = None

    def _condition(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditional then unconditional states, padded to one length, with masks."""
        states, mask = self.text_tower(prompts)
        if self._empty is None:
            self._empty = self.text_tower([""])[0]
        empty = torch.zeros_like(states)
        empty_mask = torch.zeros_like(mask)
        empty[:, : self._empty.shape[1]] = self._empty
        empty_mask[:, : self._empty.shape[1]] = True
        return torch.cat([states, empty]), torch.cat([mask, empty_mask])

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_inference_steps: int = 8,
                 guidance_scale: float = 3.0,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 output_type: str = "pil") -> ImagePipelineOutput:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        device, dtype = self.unet.device, self.unet.dtype
        states, mask = self._condition(prompts)
        states, mask = states.to(device, dtype), mask.to(device, dtype)
        size = self.unet.config.sample_size
        x = randn_tensor((len(prompts), 3, size, size), generator=generator, device=device,
                         dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        x = x * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = self.scheduler.scale_model_input(torch.cat([x, x]), t)
            out = self.unet(model_in, t, encoder_hidden_states=states,
                            encoder_attention_mask=mask).sample
            cond, uncond = out.chunk(2)
            x = self.scheduler.step(uncond + guidance_scale * (cond - uncond), t, x).prev_sample
        images = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).float().cpu().numpy()
        if output_type == "pil":
            images = self.numpy_to_pil(images)
        return ImagePipelineOutput(images=images)

"""A diffusers pipeline for the world generator: text -> 32x32 pseudo-image."""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


class WorldGeneratorPipeline(DiffusionPipeline):
    """UNet + few-step scheduler + the locked text tower, with classifier-free guidance."""

    def __init__(self, unet, scheduler, text_tower):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_tower=text_tower)
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
        states, mask = self._condition(prompts)
        size = self.unet.config.sample_size
        x = randn_tensor((len(prompts), 3, size, size), generator=generator,
                         device=self.unet.device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=self.unet.device)
        x = x * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = self.scheduler.scale_model_input(torch.cat([x, x]), t)
            out = self.unet(model_in, t, encoder_hidden_states=states.to(self.unet.dtype),
                            encoder_attention_mask=mask.to(self.unet.dtype)).sample
            cond, uncond = out.chunk(2)
            x = self.scheduler.step(uncond + guidance_scale * (cond - uncond), t, x).prev_sample
        images = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).float().cpu().numpy()
        if output_type == "pil":
            images = self.numpy_to_pil(images)
        return ImagePipelineOutput(images=images)

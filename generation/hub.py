"""Any diffusers text-to-image model, by hub id or local folder (SD-Turbo and friends)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from generation.base import Generator
from generation.spec import GenerationError
from retrieval.device import gpu_decorated, looks_like_path, missing_model, offline_kwargs


class HubGenerator(Generator):
    def __init__(self, location: str, steps: int = 1, guidance: float = 0.0,
                 size: int | None = None, device: str = "cpu", dtype: str = "float32",
                 cache_size: int = 64):
        from diffusers import AutoPipelineForText2Image

        super().__init__(cache_size)
        if looks_like_path(location) and not Path(location).expanduser().exists():
            raise GenerationError(missing_model("text-to-image model", location,
                                                "generator.location", "no such folder"))
        try:
            self.pipe = AutoPipelineForText2Image.from_pretrained(
                str(Path(location).expanduser()) if looks_like_path(location) else location,
                dtype=getattr(torch, dtype),  # the profile's (retrieval.device)
                **offline_kwargs(location))
        except (OSError, ValueError) as e:
            raise GenerationError(missing_model("text-to-image model", location,
                                                "generator.location", str(e).splitlines()[0])
                                  ) from e
        self.pipe.to(device)
        if getattr(self.pipe, "safety_checker", None) is not None:
            # Pseudo-images are queries, never shown as results; a blacked-out one is useless.
            self.pipe.safety_checker = None
        self.device = torch.device(device)
        self.steps, self.guidance = steps, guidance
        self.size = size or self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        self.identity = f"hub:{location}"
        self._call = gpu_decorated(self._call_pipe)

    def _call_pipe(self, prompts: list[str], seeds: list[int], steps: int) -> list[Image.Image]:
        gens = [torch.Generator(self.device).manual_seed(s) for s in seeds]
        return self.pipe(prompt=prompts, num_inference_steps=steps,
                         guidance_scale=self.guidance, height=self.size, width=self.size,
                         generator=gens).images

    def _run(self, prompts: list[str], seeds: list[int], steps: int) -> list[Image.Image]:
        return self._call(prompts, seeds, steps)

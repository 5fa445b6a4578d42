"""The shipped world generator behind the common interface."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from generation.base import Generator
from generation.spec import GenerationError
from generation.world_pipeline import WorldGeneratorPipeline
from retrieval.text_tower import TextTower
from retrieval.weights import tensor_digest


class WorldGenerator(Generator):
    """A saved `WorldGeneratorPipeline` folder, run with the process's shared text tower."""

    def __init__(self, location: str | Path, text_tower: TextTower, steps: int = 8,
                 guidance: float = 3.0, device: str = "cpu", cache_size: int = 256):
        super().__init__(cache_size)
        location = Path(location)
        if not (location / "model_index.json").is_file():
            raise GenerationError(
                f"no world generator at {location} (expected a diffusers pipeline folder with "
                "model_index.json); it ships in assets/world-generator, or rebuild it with "
                "`itir train-generator`")
        self.pipe = WorldGeneratorPipeline.from_pretrained(location, text_tower=text_tower)
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)  # ~8 fast steps: a bar is noise
        self.device = torch.device(device)
        self.steps, self.guidance = steps, guidance
        self.size = self.pipe.unet.config.sample_size
        digest = tensor_digest({**{f"layout.{k}": v for k, v in
                                   self.pipe.layout.state_dict().items()},
                                **self.pipe.unet.state_dict()})
        self.identity = f"world-generator:{location.name}@{digest}"

    def _run(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        gens = [torch.Generator(self.device).manual_seed(s) for s in seeds]
        return self.pipe(prompts, num_inference_steps=self.steps,
                         guidance_scale=self.guidance, generator=gens).images

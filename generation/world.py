"""The shipped world generator behind the common interface."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from PIL import Image

from generation.base import Generator
from generation.onnx_unet import ONNX_FILE, OnnxUNet, unet_tag
from generation.spec import GenerationError
from generation.world_pipeline import WorldGeneratorPipeline
from retrieval.text_tower import TextTower
from retrieval.weights import tensor_digest


class WorldGenerator(Generator):
    """A saved `WorldGeneratorPipeline` folder, run with the process's shared text tower."""

    def __init__(self, location: str | Path, text_tower: TextTower, steps: int = 8,
                 guidance: float = 3.0, device: str = "cpu", cache_size: int = 256,
                 runtime: str = "auto"):
        super().__init__(cache_size)
        location = Path(location)
        if not (location / "model_index.json").is_file():
            raise GenerationError(
                f"no world generator at {location} (expected a diffusers pipeline folder with "
                "model_index.json); the world profile's ships in "
                "assets/world-generator-distilled (`itir distill-generator` rebuilds it) and "
                "its guided original in assets/world-generator (`itir train-generator`)")
        self.pipe = WorldGeneratorPipeline.from_pretrained(location, text_tower=text_tower)
        try:
            self.pipe.check_guidance(guidance)
        except ValueError as e:
            raise GenerationError(f"{e} (the generator in {location}; set generator.guidance "
                                  "or generator.location)") from None
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)  # ~8 fast steps: a bar is noise
        self.device = torch.device(device)
        self.steps, self.guidance = steps, guidance
        self.size = self.pipe.unet.config.sample_size
        digest = tensor_digest({**{f"layout.{k}": v for k, v in
                                   self.pipe.layout.state_dict().items()},
                                **self.pipe.unet.state_dict()})
        # The runtime is not part of the identity: ONNX Runtime draws the same images (to
        # ~2e-6 before rounding to 8 bits), as a batch does.
        self.identity = f"world-generator:{location.name}@{digest}"
        if runtime != "torch":
            self._use_onnx(runtime, location / "unet")

    def _use_onnx(self, runtime: str, unet_folder: Path) -> None:
        """Draw with ONNX Runtime: required (`onnx`) or where it can (`auto`)."""
        if self.device.type != "cpu":
            if runtime == "onnx":
                raise GenerationError(
                    f"generator.runtime onnx runs on the CPU only, not {self.device}; set "
                    "device=cpu, or generator.runtime=auto or torch")
            return
        if runtime == "auto" and not (unet_folder / ONNX_FILE).is_file():
            return  # a folder without an export is normal (a fresh training run's, a test's)
        try:
            self.pipe.onnx_unet = OnnxUNet(unet_folder, unet_tag(self.pipe.unet),
                                           threads=torch.get_num_threads())
        except GenerationError as e:
            if runtime == "onnx":
                raise
            warnings.warn(f"{e}. Drawing with torch meanwhile (about half as fast on a CPU)",
                          stacklevel=3)
            return
        self.runtime = "onnx"

    def _run(self, prompts: list[str], seeds: list[int], steps: int) -> list[Image.Image]:
        gens = [torch.Generator(self.device).manual_seed(s) for s in seeds]
        return self.pipe(prompts, num_inference_steps=steps,
                         guidance_scale=self.guidance, generator=gens).images

"""Build a generator from a plain spec (the profile's `[generator]` table, paths resolved)."""

from __future__ import annotations

from generation.base import Generator
from generation.spec import GENERATOR_KINDS, GeneratorSpec
from retrieval.text_tower import TextTower


def load_generator(spec: GeneratorSpec, device: str = "cpu",
                   text_tower: TextTower | None = None, dtype: str = "float32"
                   ) -> Generator | None:
    if spec.kind == "none":
        return None
    if spec.kind == "world":
        from generation.world import WorldGenerator

        if text_tower is None:
            raise ValueError("the world generator needs the text tower it was trained on")
        return WorldGenerator(spec.location, text_tower, steps=spec.steps,
                              guidance=spec.guidance, device=device, runtime=spec.runtime)
    if spec.kind == "hub":
        from generation.hub import HubGenerator

        return HubGenerator(spec.location, steps=spec.steps, guidance=spec.guidance,
                            size=spec.size, device=device, dtype=dtype)
    raise ValueError(f"unknown generator kind {spec.kind!r}; expected one of {GENERATOR_KINDS}")

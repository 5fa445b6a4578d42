"""Build a generator from a plain spec (the profile's `[generator]` table, paths resolved)."""

from __future__ import annotations

from dataclasses import dataclass

from generation.base import Generator
from retrieval.text_tower import TextTower

GENERATOR_KINDS = ("world", "hub", "none")


@dataclass(frozen=True)
class GeneratorSpec:
    kind: str = "world"  # world | hub | none
    location: str = "assets/world-generator"  # pipeline folder or hub id
    steps: int = 8
    guidance: float = 3.0
    seed: int = 0
    samples: int = 1  # K pseudo-images per turn (one batched call); g = their mean embedding
    batch_size: int = 8  # the most queries concurrent turns draw in one call of the model
    size: int | None = None  # hub pipelines only; None = the model's default


def needs_text_tower(spec: GeneratorSpec) -> bool:
    return spec.kind == "world"


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
                              guidance=spec.guidance, device=device)
    if spec.kind == "hub":
        from generation.hub import HubGenerator

        return HubGenerator(spec.location, steps=spec.steps, guidance=spec.guidance,
                            size=spec.size, device=device, dtype=dtype)
    raise ValueError(f"unknown generator kind {spec.kind!r}; expected one of {GENERATOR_KINDS}")

"""Build the generator a profile asks for."""

from __future__ import annotations

from generation.base import Generator
from itir.profile import Profile
from retrieval.text_tower import TextTower


def load_generator(profile: Profile, text_tower: TextTower | None = None) -> Generator | None:
    spec = profile.generator
    if spec.kind == "none":
        return None
    if spec.kind == "world":
        from generation.world import WorldGenerator

        return WorldGenerator(profile.resolve(spec.location), text_tower or TextTower(),
                              steps=spec.steps, guidance=spec.guidance, device=profile.torch_device)
    if spec.kind == "hub":
        from generation.hub import HubGenerator

        return HubGenerator(profile.resolve(spec.location), steps=spec.steps,
                            guidance=spec.guidance, size=spec.size, device=profile.torch_device)
    raise ValueError(f"unknown generator kind {spec.kind!r}; expected world, hub or none")

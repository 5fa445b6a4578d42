"""Refuse a hub model that cannot be had before any model library is imported.

Offline, `from_pretrained` retries the hub for half a minute, and even the loaders' own check
(retrieval/device.py) comes after importing torch and transformers: several seconds on a small
CPU. The profile alone says which hub models a run needs, so they are checked first, from
this torch-free module, with the loaders' own message.
"""

from __future__ import annotations

from engine.profile import Profile
from fusion.base import Fusion
from fusion.factory import AUTO, load_fusion
from generation.spec import GenerationError
from retrieval.device import check_reachable, missing_model
from retrieval.spec import HUB_ENCODER_KINDS

# What marks a downloaded model folder: transformers' config, a diffusers pipeline's index.
ENCODER_MARKER, PIPELINE_MARKER = "config.json", "model_index.json"


def check_models_reachable(profile: Profile, encoder: bool = True,
                           generator: bool = True) -> None:
    """OSError (encoder) or GenerationError (generator) naming the model, the reason and the
    local-folder fix, for a hub model neither reachable nor in the local cache."""
    if encoder and profile.encoder.kind in HUB_ENCODER_KINDS:
        location = profile.encoder_spec.location
        try:
            check_reachable(location, ENCODER_MARKER)
        except OSError as e:
            raise OSError(missing_model(f"{profile.encoder.kind.upper()} model", location,
                                        "encoder.location", str(e))) from None
    if generator and profile.generator.kind == "hub":
        location = profile.generator_spec.location
        try:
            check_reachable(location, PIPELINE_MARKER)
        except OSError as e:
            raise GenerationError(missing_model("text-to-image model", location,
                                                "generator.location", str(e))) from None


def draws_pseudo_images(profile: Profile, fusion: Fusion | None = None) -> bool:
    """Whether the app loads the generator: for the fusion (`auto` may pick a learned one),
    or to show the person. The engine's factory asks the same, with the profile's fusion
    already loaded (`fusion`)."""
    location = profile.fusion_location
    if profile.show_pseudo_image or location == AUTO:
        return True
    return (fusion or load_fusion(location)).uses_image

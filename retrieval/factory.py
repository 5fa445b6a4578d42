"""Build an encoder from a plain spec (the profile's `[encoder]` table, paths resolved)."""

from __future__ import annotations

from pathlib import Path

from retrieval.encoders import BLIPEncoder, CLIPEncoder, Encoder, WorldEncoder
from retrieval.spec import ENCODER_KINDS, DomainSpec, EncoderSpec
from retrieval.text_tower import TextTower


def load_encoder(spec: EncoderSpec, device: str = "cpu",
                 text_tower: TextTower | None = None, domains: DomainSpec | None = None,
                 onnx_folder: str | Path | None = None) -> Encoder:
    """`domains`: a folder of image-domain adapters (`itir domain add`; world encoder only).
    `onnx_folder`: where the world encoder keeps its text side's ONNX graph (spec.runtime)."""
    if spec.kind == "world":
        if text_tower is None:
            raise ValueError("the world encoder needs the text tower it was trained on")
        return WorldEncoder(spec.location, text_tower, device=device, domains=domains,
                            runtime=spec.runtime, onnx_folder=onnx_folder,
                            quantize=spec.quantize)
    if spec.kind in ("clip", "blip"):
        backend = CLIPEncoder if spec.kind == "clip" else BLIPEncoder
        return backend(spec.location, device=device, batch_size=spec.batch_size)
    raise ValueError(f"unknown encoder kind {spec.kind!r}; expected one of {ENCODER_KINDS}")

"""What a profile says about its encoder and image domains: plain data, importable without
torch (a profile is read, and a missing hub model refused, before any model library loads)."""

from __future__ import annotations

from dataclasses import dataclass

ENCODER_KINDS = ("world", "clip", "blip")
HUB_ENCODER_KINDS = ("clip", "blip")  # transformers models, by hub id or local folder
QUANTIZE = ("none", "int8")


@dataclass(frozen=True)
class EncoderSpec:
    kind: str = "world"  # world | clip | blip
    location: str = "assets/world-encoder"  # folder or hub id
    batch_size: int = 64
    # How the text side runs: the world encoder's (MiniLM's layers and its trained head) and
    # the MiniLM layers the world generator reads. onnx = ONNX Runtime on the CPU, from
    # graphs exported on first use into ITIR_HOME/onnx; auto = onnx on a CPU where the
    # export works, torch otherwise. (The generator's UNet: `[generator] runtime`.)
    runtime: str = "auto"
    # On ONNX Runtime, the world encoder's own text side (not the layers the generator reads)
    # with its matrix products in int8 ("int8": weights per output channel, activations per
    # call; about twice as fast on a CPU) or as exported ("none"). Its query embeddings then
    # differ slightly from float32's (cosine ~0.998), so caches of them are keyed apart.
    # Nothing to quantize where the text side runs on torch.
    quantize: str = "none"


def needs_text_tower(spec: EncoderSpec) -> bool:
    """The world encoder reads the shared MiniLM tower; others bring their own text model."""
    return spec.kind == "world"


@dataclass(frozen=True)
class DomainSpec:
    """The profile's `[domains]` table."""

    folder: str = ""  # "": ITIR_HOME/domains/<profile name>
    temperature: float = 0.1  # routing softmax temperature (lower: closer to one domain)
    keep: float = 0.05  # weights below keep x the largest are dropped
    rank: int = 8  # LoRA rank of new adapters
    steps: int = 300  # training steps of `itir domain add`
    batch_size: int = 128

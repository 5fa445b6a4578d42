"""The world dual encoder: a small CNN image tower and a head on the locked text tower.

LiT-style: the pretrained text tower never changes; what trains is the image tower and a
one-layer attention head that reads the text tower's token states. The head (rather than a
projection of the mean-pooled vector) lets "a red circle and a blue square" differ from "a
blue circle and a red square", which mean pooling nearly erases.

With `text_layers = k` the head also owns a trained copy of the tower's top k layers and
reads the tower's states from below them. Free wording ("at the top on the left", "a wee
block") needs more than one layer of attention to bind, and starting those layers from the
tower's own weights keeps what the pretrained model knows about words never trained on.

Saved the Hugging Face way: `model.save_pretrained(folder)` writes config.json and
model.safetensors, `WorldDualEncoder.from_pretrained(folder)` reads them back. The text
tower is named in the config, not stored: it is a public model loaded by its own package.
"""

# No `from __future__ import annotations` here: PyTorchModelHubMixin reads the `config`
# annotation at runtime to rebuild the dataclass from config.json.

import os
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin, constants
from torch import nn

from retrieval.text_tower import MINILM_HUB_ID


@dataclass(frozen=True)
class WorldEncoderConfig:
    embed_dim: int = 256
    image_size: int = 64
    widths: tuple[int, ...] = (32, 64, 128, 192)  # one stride-2 stage each: 64 -> 4 pixels
    text_width: int = 384  # the text tower's hidden size
    text_heads: int = 6
    text_tower: str = MINILM_HUB_ID  # the locked tower the head reads
    text_layers: int = 0  # top layers of the tower the head owns a trained copy of
    tower_heads: int = 12  # the tower's layer shape, for those copies
    tower_ffn: int = 1536
    tower_norm_eps: float = 1e-12

    def __post_init__(self):
        # config.json holds a list; a tuple keeps the config hashable and comparable.
        object.__setattr__(self, "widths", tuple(self.widths))


class ResidualStage(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(c_out), nn.GELU())
        self.body = nn.Sequential(nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c_out), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return x + self.body(x)


class ImageTower(nn.Module):
    """uint8-range RGB [B,3,S,S] -> embedding [B,D]. Flattens the last map: where things
    are in the picture matters, so no global pooling."""

    def __init__(self, cfg: WorldEncoderConfig):
        super().__init__()
        widths = (3, *cfg.widths)
        self.stages = nn.Sequential(*[ResidualStage(a, b) for a, b in zip(widths, widths[1:])])
        side = cfg.image_size // 2 ** len(cfg.widths)
        self.proj = nn.Sequential(nn.Flatten(), nn.Dropout(0.1),
                                  nn.Linear(cfg.widths[-1] * side * side, cfg.embed_dim))
        self.image_size = cfg.image_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-1] != self.image_size:
            pixels = F.interpolate(pixels.float(), size=self.image_size, mode="bilinear",
                                   antialias=True, align_corners=False)
        return self.proj(self.stages(pixels.float() / 127.5 - 1.0))


class TextHead(nn.Module):
    """Token states [B,L,W] + mask -> embedding [B,D]: the copied tower layers (if any), one
    attention layer, masked mean. The states come from `TextTower.forward(texts, layer)`
    with `layer = head.states_layer`."""

    def __init__(self, cfg: WorldEncoderConfig):
        super().__init__()
        # Shaped like the tower's own layers (post-norm, exact GELU); `TextTower.top_layers`
        # gives their starting weights.
        self.tower_top = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg.text_width, cfg.tower_heads, cfg.tower_ffn,
                                       dropout=0.1, activation="gelu",
                                       layer_norm_eps=cfg.tower_norm_eps,
                                       batch_first=True, norm_first=False)
            for _ in range(cfg.text_layers))
        self.states_layer = -1 - cfg.text_layers
        self.layer = nn.TransformerEncoderLayer(cfg.text_width, cfg.text_heads,
                                                2 * cfg.text_width, dropout=0.1,
                                                batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(cfg.text_width)
        self.proj = nn.Linear(cfg.text_width, cfg.embed_dim)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.tower_top:
            states = layer(states, src_key_padding_mask=~mask)
        x = self.norm(self.layer(states, src_key_padding_mask=~mask))
        m = mask.unsqueeze(-1).float()
        return self.proj((x * m).sum(1) / m.sum(1).clamp_min(1.0))


def with_tower_layers(model: "WorldDualEncoder", tower_layers: nn.ModuleList
                      ) -> "WorldDualEncoder":
    """`model` whose text head now owns `tower_layers` (`TextTower.top_layers(k)`, copies
    of the tower's top k layers) and reads the tower's states from below them: the same
    embeddings as `model` until it trains. A head that already owns j < k layers keeps its
    trained copies on top and takes fresh copies of the k - j layers below them."""
    owned, count = model.config.text_layers, len(tower_layers)
    if not count:
        raise ValueError("no tower layers given: copy at least one (`top_layers(k)`, k >= 1)")
    if owned >= count:
        raise ValueError(f"this encoder already owns {owned} tower layers; give more than that")
    first = tower_layers[0]
    shape = {"tower_heads": first.self_attn.num_heads, "tower_ffn": first.linear1.out_features,
             "tower_norm_eps": first.norm1.eps}
    if owned and shape != {k: getattr(model.config, k) for k in shape}:
        raise ValueError(f"these tower layers ({shape}) are not shaped like the ones the "
                         "encoder owns: copy them from the same tower")
    out = WorldDualEncoder(replace(model.config, text_layers=count, **shape))
    copies = "text.tower_top."
    result = out.load_state_dict({k: v for k, v in model.state_dict().items()
                                  if not k.startswith(copies)}, strict=False)
    if result.unexpected_keys or any(not k.startswith(copies) for k in result.missing_keys):
        raise ValueError(f"weights do not fit the encoder with tower layers: {result}")
    # Fresh copies below, the owned (trained) ones on top of them.
    fresh = count - owned
    out.text.tower_top[:fresh].load_state_dict(tower_layers[:fresh].state_dict())
    out.text.tower_top[fresh:].load_state_dict(model.text.tower_top.state_dict())
    return out


class WorldDualEncoder(nn.Module, PyTorchModelHubMixin, license="mit",
                       tags=["itir", "text-to-image-retrieval", "dual-encoder"]):
    def __init__(self, config: WorldEncoderConfig):
        super().__init__()
        self.config = config
        self.image = ImageTower(config)
        self.text = TextHead(config)
        self.logit_scale = nn.Parameter(torch.tensor(2.66))  # log(1/0.07), as in CLIP

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(pixels), dim=-1)

    def encode_text(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(states, mask), dim=-1)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", strict: bool = True,
                         **kwargs):
        # The mixin's loader, made strict (weights that do not fit the config are an error,
        # not a half-random model) and, for local folders, quiet: huggingface_hub prints a
        # line there, which would land in the CLI's stdout (`itir bench` prints JSON there).
        if not os.path.isdir(model_id):
            return super()._from_pretrained(model_id=model_id, map_location=map_location,
                                            strict=strict, **kwargs)
        model = cls(config=kwargs["config"])
        weights = os.path.join(model_id, constants.SAFETENSORS_SINGLE_FILE)
        return cls._load_as_safetensor(model, weights, map_location, strict)

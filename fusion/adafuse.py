"""ADaFuSE: a learned gate and a dense mixture of experts decide, per query, how far to trust
the pseudo-image.

    t', g' = Dropout(GELU(Linear_D->P(t))), Dropout(GELU(Linear_D->P(g)));  h = [t'; g']
    lambda = sigmoid(Linear_H->1(Dropout(GELU(Linear_2P->H(h)))))          one scalar per query
    p      = softmax(Linear_H/4->E(GELU(Linear_2P->H/4(h))))               dense routing
    r      = Dropout(Linear_H->D(sum_k p_k * Dropout(GELU(Linear_2P->H(h)))_k))
    q      = normalize(lambda * t + (1 - lambda) * g + r)

as DESIGN.md ("Fusion") gives it. The gate interpolates between the two inputs and the experts
add a residual correction; with dense routing there is no top-k and no balancing loss. The
head owns its logit scale (initialised to ln 50, temperature 0.02) as the authors' code does.

A checkpoint is a folder: fusion_config.json (kind, sizes, and the identity and dimension of
the encoder whose space it fuses) + model.safetensors. It only makes sense in that encoder's
space, so loading it beside another encoder is refused.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from fusion.base import CONFIG_NAME, Fused, Fusion, check_inputs, read_config

WEIGHTS_NAME = "model.safetensors"
BUDGET = 0.07  # the head may have at most this fraction of the frozen encoders' parameters


class FusionMismatchError(ValueError):
    """A learned fusion was loaded beside an encoder it was not trained for."""


@dataclass(frozen=True)
class ADaFuSEConfig:
    dim: int = 256  # D: the encoder's embedding dimension
    proj: int = 256  # P
    hidden: int = 512  # H
    experts: int = 4  # E
    dropout: float = 0.2
    logit_scale: float = math.log(50.0)
    gate_bias: float | None = None  # None: PyTorch's default init; 2.0: start at lambda 0.88
    zero_residual: bool = False  # start with r = 0
    encoder: str = ""  # identity of the encoder whose embeddings the head fuses

    @classmethod
    def for_encoder(cls, dim: int, encoder_parameters: int, encoder: str = "",
                    **overrides) -> ADaFuSEConfig:
        """The largest of the reference shapes (P, H) = (2D, 8D), (D, 2D), (D/2, D) whose
        head stays within `BUDGET` of the encoders' parameters. For D = 256 the first is the
        paper's P = 512, H = 2048 (BLIP); the world's ~24M-parameter encoders get the second."""
        for proj, hidden in ((2 * dim, 8 * dim), (dim, 2 * dim), (dim // 2, dim)):
            cfg = cls(dim=dim, proj=proj, hidden=hidden, encoder=encoder, **overrides)
            if ADaFuSEHead.count(cfg) <= BUDGET * encoder_parameters:
                return cfg
        return cfg  # the smallest shape, even if over budget: the card reports the ratio


class ADaFuSEHead(nn.Module):
    def __init__(self, cfg: ADaFuSEConfig):
        super().__init__()
        self.cfg = cfg
        d, p, h, e = cfg.dim, cfg.proj, cfg.hidden, cfg.experts
        drop = nn.Dropout(cfg.dropout)  # stateless, so one module serves every site
        self.text_proj = nn.Sequential(nn.Linear(d, p), nn.GELU(), drop)
        self.image_proj = nn.Sequential(nn.Linear(d, p), nn.GELU(), drop)
        self.gate = nn.Sequential(nn.Linear(2 * p, h), nn.GELU(), drop, nn.Linear(h, 1))
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(2 * p, h), nn.GELU(), drop)
                                     for _ in range(e))
        self.router = nn.Sequential(nn.Linear(2 * p, h // 4), nn.GELU(), nn.Linear(h // 4, e))
        self.out = nn.Sequential(nn.Linear(h, d), drop)
        self.logit_scale = nn.Parameter(torch.tensor(cfg.logit_scale))
        # Optionally start as (nearly) the text alone, so that what training changes is
        # where the pseudo-image earns its weight (see fusion/train_adafuse.py).
        if cfg.gate_bias is not None:
            nn.init.zeros_(self.gate[-1].weight)
            nn.init.constant_(self.gate[-1].bias, cfg.gate_bias)
        if cfg.zero_residual:
            nn.init.zeros_(self.out[0].weight)
            nn.init.zeros_(self.out[0].bias)

    @staticmethod
    def count(cfg: ADaFuSEConfig) -> int:
        """Parameters of a head with `cfg` (without building it)."""
        d, p, h, e = cfg.dim, cfg.proj, cfg.hidden, cfg.experts
        linear = lambda a, b: a * b + b  # noqa: E731
        return (2 * linear(d, p) + linear(2 * p, h) + linear(h, 1) + e * linear(2 * p, h)
                + linear(2 * p, h // 4) + linear(h // 4, e) + linear(h, d) + 1)

    def forward(self, t: torch.Tensor, g: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q [B, D] unit-norm, lambda [B], expert weights [B, E])."""
        h = torch.cat([self.text_proj(t), self.image_proj(g)], dim=-1)
        lam = torch.sigmoid(self.gate(h)).squeeze(-1)
        weights = self.router(h).softmax(-1)
        mixed = torch.einsum("be,beh->bh", weights, torch.stack([x(h) for x in self.experts], 1))
        q = lam[:, None] * t + (1 - lam[:, None]) * g + self.out(mixed)
        return F.normalize(q, dim=-1), lam, weights


class ADaFuSE(Fusion):
    """The trained head behind the fusion interface (inference: eval mode, no grad, CPU)."""

    kind, uses_image = "adafuse", True

    def __init__(self, head: ADaFuSEHead, name: str = "adafuse"):
        self.head = head.eval()
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def cfg(self) -> ADaFuSEConfig:
        return self.head.cfg

    def check_encoder(self, identity: str, dim: int) -> None:
        if dim != self.cfg.dim or (self.cfg.encoder and identity != self.cfg.encoder):
            raise FusionMismatchError(
                f"this ADaFuSE checkpoint was trained on the embeddings of {self.cfg.encoder!r} "
                f"({self.cfg.dim}-d), but the encoder is {identity!r} ({dim}-d); use a "
                "checkpoint trained for this encoder (`itir train-fusion`) or a built-in "
                "fusion (text, dar, add)")

    @torch.no_grad()
    def __call__(self, t, g, rounds) -> Fused:
        t, rounds = check_inputs(t, g, rounds)
        q, lam, weights = self.head(torch.from_numpy(t), torch.from_numpy(
            np.asarray(g, np.float32)))
        return Fused(q.numpy(), {"lambda": lam.numpy(), "experts": weights.numpy()})

    def config(self) -> dict:
        return asdict(self.cfg)

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = super().save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()},
                  str(folder / WEIGHTS_NAME))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> ADaFuSE:
        folder = Path(folder)
        config = read_config(folder)
        config.pop("kind", None)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"the ADaFuSE checkpoint at {folder} has {CONFIG_NAME} "
                                    f"but no {WEIGHTS_NAME}; copy the whole folder")
        try:
            head = ADaFuSEHead(ADaFuSEConfig(**config))
            head.load_state_dict(load_file(str(weights)))
        except Exception as e:  # unknown keys, wrong shapes, a damaged file: one message
            raise ValueError(f"the ADaFuSE checkpoint at {folder} could not be loaded "
                             f"({' '.join(str(e).split())[:200]}); train it again with "
                             "`itir train-fusion`") from e
        return cls(head, name=f"adafuse:{folder.name}")


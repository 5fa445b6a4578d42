"""The ADaFuSE head as a torch module, for training (fusion/train_adafuse.py).

The formula and the checkpoint are fusion/adafuse.py's; the app runs the trained weights
there, in NumPy. The parameter names below are the checkpoint's keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fusion.adafuse import ADaFuSE, ADaFuSEConfig, parameter_count


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

    count = staticmethod(parameter_count)

    def forward(self, t: torch.Tensor, g: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q [B, D] unit-norm, lambda [B], expert weights [B, E])."""
        h = torch.cat([self.text_proj(t), self.image_proj(g)], dim=-1)
        lam = torch.sigmoid(self.gate(h)).squeeze(-1)
        weights = self.router(h).softmax(-1)
        mixed = torch.einsum("be,beh->bh", weights, torch.stack([x(h) for x in self.experts], 1))
        q = lam[:, None] * t + (1 - lam[:, None]) * g + self.out(mixed)
        return F.normalize(q, dim=-1), lam, weights

    @classmethod
    def from_fusion(cls, fusion: ADaFuSE) -> ADaFuSEHead:
        """A trainable module holding a copy of the app's fusion weights."""
        head = cls(fusion.cfg)
        head.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in fusion.weights.items()})
        return head

    def fusion(self, name: str = "adafuse") -> ADaFuSE:
        """The app's fusion with a copy of these weights."""
        return ADaFuSE.from_head(self, name)

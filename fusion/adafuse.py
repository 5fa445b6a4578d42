"""ADaFuSE: a learned gate and a dense mixture of experts decide, per query, how far to trust
the pseudo-image.

    t', g' = Dropout(GELU(Linear_D->P(t))), Dropout(GELU(Linear_D->P(g)));  h = [t'; g']
    lambda = sigmoid(Linear_H->1(Dropout(GELU(Linear_2P->H(h)))))          one scalar per query
    p      = softmax(Linear_H/4->E(GELU(Linear_2P->H/4(h))))               dense routing
    r      = Dropout(Linear_H->D(sum_k p_k * Dropout(GELU(Linear_2P->H(h)))_k))
    q      = normalize(lambda * t + (1 - lambda) * g + r)

as DESIGN.md ("Fusion") gives it. The gate interpolates between the two inputs and the experts
add a residual correction; with dense routing there is no top-k and no balancing loss.

This module is inference, in NumPy: the head is a few small matrix products per query, and on
some processors torch's per-operation overhead made it cost 3 ms where these products take a
fraction of one. The gate's, the experts' and the router's first layers read the same `h`, so
they run as one product. Training uses the torch module with the same parameter names
(fusion/adafuse_head.py); tests/test_adafuse.py checks that the two agree.

A checkpoint is a folder: fusion_config.json (kind, sizes, and the identity and dimension of
the encoder whose space it fuses) + model.safetensors. It only makes sense in that encoder's
space, so loading it beside another encoder is refused.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors.numpy import load_file, save_file

from fusion.base import CONFIG_NAME, Fused, Fusion, check_inputs, read_config

if TYPE_CHECKING:
    from fusion.adafuse_head import ADaFuSEHead

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
    logit_scale: float = math.log(50.0)  # the head's own temperature, as the authors' code
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
            if parameter_count(cfg) <= BUDGET * encoder_parameters:
                return cfg
        return cfg  # the smallest shape, even if over budget: the card reports the ratio


def parameter_shapes(cfg: ADaFuSEConfig) -> dict[str, tuple[int, ...]]:
    """Every weight of a head with `cfg`, by the name torch's module gives it ([out, in])."""
    d, p, h, e = cfg.dim, cfg.proj, cfg.hidden, cfg.experts
    linear = lambda name, n_in, n_out: {f"{name}.weight": (n_out, n_in),
                                        f"{name}.bias": (n_out,)}
    shapes = {**linear("text_proj.0", d, p), **linear("image_proj.0", d, p),
              **linear("gate.0", 2 * p, h), **linear("gate.3", h, 1),
              **linear("router.0", 2 * p, h // 4), **linear("router.2", h // 4, e),
              **linear("out.0", h, d), "logit_scale": ()}
    for k in range(e):
        shapes.update(linear(f"experts.{k}.0", 2 * p, h))
    return shapes


def parameter_count(cfg: ADaFuSEConfig) -> int:
    return sum(math.prod(shape) for shape in parameter_shapes(cfg).values())


ERF_COEFFICIENTS = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x * Phi(x), as torch's default. NumPy has no erf, so erf is Abramowitz &
    Stegun 7.1.26 (absolute error below 1.5e-7, under float32's own rounding here). In place
    where it can be: at one query per call, each NumPy operation costs more than its math."""
    z = np.abs(x)
    z *= 1 / math.sqrt(2)
    s = z * 0.3275911
    s += 1
    np.reciprocal(s, out=s)
    tail = s * ERF_COEFFICIENTS[0]  # Horner: s * (a1 + s * (a2 + ... + s * a5))
    for c in ERF_COEFFICIENTS[1:]:
        tail += c
        tail *= s
    np.square(z, out=z)
    np.negative(z, out=z)
    tail *= np.exp(z, out=z)  # 1 - erf(|x| / sqrt 2)
    tail *= x
    tail *= 0.5
    return np.where(x >= 0, x - tail, tail)


class ADaFuSE(Fusion):
    """The trained head behind the fusion interface (inference only, CPU, NumPy)."""

    kind, uses_image = "adafuse", True

    def __init__(self, cfg: ADaFuSEConfig, weights: dict[str, np.ndarray],
                 name: str = "adafuse"):
        shapes = parameter_shapes(cfg)
        wrong = [f"{k} {np.shape(weights[k]) if k in weights else 'missing'} (expected "
                 f"{shapes[k]})" for k in shapes
                 if k not in weights or np.shape(weights[k]) != shapes[k]]
        wrong += [f"{k} (unexpected)" for k in sorted(set(weights) - set(shapes))]
        if wrong:
            raise ValueError(f"ADaFuSE weights do not fit {cfg}: {', '.join(wrong[:4])}")
        self.cfg, self._name = cfg, name
        # Copies, read-only: a head trained on after `.fusion()` must not change this one.
        self.weights = {k: np.array(v, np.float32) for k, v in weights.items()}
        for v in self.weights.values():
            v.flags.writeable = False
        w = self.weights
        in_out = lambda name: np.ascontiguousarray(w[f"{name}.weight"].T)  # torch's [out, in]
        d, p, e = cfg.dim, cfg.proj, cfg.experts
        # [t; g] @ [[W_t, 0], [0, W_g]]: both input projections in one product and one GELU.
        both = np.zeros((2 * d, 2 * p), np.float32)
        both[:d, :p], both[d:, p:] = in_out("text_proj.0"), in_out("image_proj.0")
        self._inputs = both, np.concatenate([w["text_proj.0.bias"], w["image_proj.0.bias"]])
        # One product for the three first layers that read h: gate | experts 0..E-1 | router.
        firsts = ["gate.0", *(f"experts.{k}.0" for k in range(e)), "router.0"]
        self._first = (np.concatenate([in_out(n) for n in firsts], 1),
                       np.concatenate([w[f"{n}.bias"] for n in firsts]))
        self._gate = in_out("gate.3"), w["gate.3.bias"]
        self._router = in_out("router.2"), w["router.2.bias"]
        self._out = in_out("out.0"), w["out.0.bias"]

    @classmethod
    def from_head(cls, head: ADaFuSEHead, name: str = "adafuse") -> ADaFuSE:
        """From the torch module being trained (fusion/adafuse_head.py), weights copied."""
        return cls(head.cfg, {k: v.detach().float().cpu().numpy()
                              for k, v in head.state_dict().items()}, name)

    @property
    def name(self) -> str:
        return self._name

    def check_encoder(self, identity: str, dim: int) -> None:
        if dim != self.cfg.dim or (self.cfg.encoder and identity != self.cfg.encoder):
            raise FusionMismatchError(
                f"this ADaFuSE checkpoint was trained on the embeddings of {self.cfg.encoder!r} "
                f"({self.cfg.dim}-d), but the encoder is {identity!r} ({dim}-d); use a "
                "checkpoint trained for this encoder (`itir train-fusion`) or a built-in "
                "fusion (text, dar, add)")

    def __call__(self, t, g, rounds) -> Fused:
        t, rounds = check_inputs(t, g, rounds)
        g = np.asarray(g, np.float32)
        linear = lambda x, wb: x @ wb[0] + wb[1]
        hid, e = self.cfg.hidden, self.cfg.experts
        h = gelu(linear(np.concatenate([t, g], 1), self._inputs))
        first = gelu(linear(h, self._first))  # every first layer is followed by a GELU
        gate_h, router_h = first[:, :hid], first[:, hid * (1 + e):]
        expert_h = first[:, hid:hid * (1 + e)].reshape(len(t), e, hid)
        lam = 0.5 * (1 + np.tanh(0.5 * linear(gate_h, self._gate)))  # sigmoid, [B, 1]
        logits = linear(router_h, self._router)
        weights = np.exp(logits - logits.max(1, keepdims=True))
        weights /= weights.sum(1, keepdims=True)
        q = linear((weights[:, None, :] @ expert_h)[:, 0], self._out)  # the residual r
        q += g + lam * (t - g)
        q /= np.maximum(np.sqrt(np.square(q).sum(1, keepdims=True)), 1e-12)
        return Fused(q, {"lambda": lam[:, 0], "experts": weights})

    def config(self) -> dict:
        return asdict(self.cfg)

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = super().save_pretrained(folder)
        save_file({k: np.asarray(v, order="C") for k, v in self.weights.items()},
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
            return cls(ADaFuSEConfig(**config), load_file(str(weights)),
                       name=f"adafuse:{folder.name}")
        except Exception as e:  # unknown keys, wrong shapes, a damaged file: one message
            raise ValueError(f"the ADaFuSE checkpoint at {folder} could not be loaded "
                             f"({' '.join(str(e).split())[:200]}); train it again with "
                             "`itir train-fusion`") from e

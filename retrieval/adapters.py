"""Per-domain LoRA adapters on the frozen world image tower, merged per input by routing weights.

Dynamic Adapter Routing merges the adapters an input routes to by weight averaging. A LoRA
delta is linear in its weights, so at every adapted layer the merged layer applied to x is
exactly   W x + sum_d w_d * B_d A_d x   : running each adapter's low-rank path and summing
by the input's weights *is* weight merging, and it lets one batch hold inputs routed
differently. (peft's mixed-batch inference picks one adapter per input; it does not merge
several by per-input weights, hence these few lines of our own.)

Targets: every convolution of the tower and its output projection, rank 8 (about 5% of the
tower for each adapter). BatchNorm keeps the base domain's statistics.
"""

# No `from __future__ import annotations`: PyTorchModelHubMixin reads `config` at runtime.

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from retrieval.world_encoder import ImageTower


@dataclass(frozen=True)
class AdapterConfig:
    domain: str
    rank: int = 8
    alpha: float = 8.0  # the delta is scaled by alpha / rank, as in LoRA
    base: str = ""  # identity of the image tower the adapter was trained on


def adapted_layers(tower: ImageTower) -> dict[str, nn.Module]:
    """The layers an adapter changes, by their path in the tower ("stages.0.down.0"): every
    Conv2d and the final Linear."""
    return {name: m for name, m in tower.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _key(path: str) -> str:
    return path.replace(".", "_")  # ModuleDict keys may not contain dots


class LowRank(nn.Module):
    """B(A(x)) shaped like `layer`: A has the layer's kernel, stride and padding; B is 1x1."""

    def __init__(self, layer: nn.Module, rank: int):
        super().__init__()
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1 or layer.dilation != (1, 1) or layer.padding_mode != "zeros":
                raise ValueError("LowRank adapts plain convolutions only")
            self.down = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride,
                                  layer.padding, bias=False)
            self.up = nn.Conv2d(rank, layer.out_channels, 1, bias=False)
        else:
            self.down = nn.Linear(layer.in_features, rank, bias=False)
            self.up = nn.Linear(rank, layer.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
        nn.init.zeros_(self.up.weight)  # a new adapter starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def merged(self) -> torch.Tensor:
        """B A as one weight shaped like the adapted layer's."""
        up = self.up.weight.flatten(1)  # [out, rank]
        return torch.einsum("or,r...->o...", up, self.down.weight)


class DomainAdapter(nn.Module, PyTorchModelHubMixin, license="mit",
                    tags=["itir", "lora", "continual-learning"]):
    """One domain's low-rank deltas for every adapted layer of a world image tower."""

    def __init__(self, config: AdapterConfig, tower: ImageTower):
        super().__init__()
        self.config = config
        self.scale = config.alpha / config.rank
        self.deltas = nn.ModuleDict({_key(path): LowRank(layer, config.rank)
                                     for path, layer in adapted_layers(tower).items()})

    @classmethod
    def load(cls, folder, tower: ImageTower, base: str | None = None) -> "DomainAdapter":
        """`from_pretrained` from a local folder, strictly (missing weights are an error, not
        zero deltas), for the tower the adapter's shapes come from; with `base`, refuse an
        adapter trained on another tower."""
        folder = Path(folder)
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(f"no adapter at {folder} (config.json, model.safetensors)")
        try:
            adapter = cls.from_pretrained(folder, tower=tower, strict=True)
        except RuntimeError as e:  # shapes or keys that do not fit this tower
            raise ValueError(f"the adapter at {folder} does not fit this image tower: "
                             f"{str(e).splitlines()[0]}") from None
        if base and adapter.config.base and adapter.config.base != base:
            raise ValueError(f"the adapter at {folder} was trained on image tower "
                             f"{adapter.config.base}, not on this one ({base})")
        return adapter


class RoutedImageTower(nn.Module):
    """A frozen `ImageTower` plus adapters; `forward(pixels, weights)` embeds each input with
    the adapters merged by its row of `weights` [B, n_adapters] (rows of zeros: the base)."""

    def __init__(self, tower: ImageTower, adapters: list[DomainAdapter] | None = None):
        super().__init__()
        self.tower = tower.eval().requires_grad_(False)
        self.adapters = nn.ModuleList(adapters or [])
        # Per call, not per thread: callers serialise turns (the app's GPU/CPU lane).
        self._weights: torch.Tensor | None = None
        self._stacked: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._dense: torch.Tensor | None = None  # the convs' deltas, for single inputs
        self._convs_merged = False
        self._hooks = [layer.register_forward_hook(self._hook(_key(path), layer))
                       for path, layer in adapted_layers(tower).items()]
        self.eval()  # an inference wrapper unless a trainer says otherwise

    def detach(self) -> None:
        """Take the hooks off the tower (it may outlive this wrapper, e.g. after training)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def train(self, mode: bool = True) -> "RoutedImageTower":
        super().train(mode)
        self.tower.eval()  # the base stays exactly as it was, BatchNorm statistics included
        self._stacked = self._dense = None  # adapters may change while training
        return self

    def _stack(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every adapter's down weights concatenated along the rank (one conv for all of
        them) and up weights along their input, per layer: cached while in eval mode."""
        if self._stacked is None or self.training:
            self._stacked = {
                name: (torch.cat([a.deltas[name].down.weight for a in self.adapters]),
                       torch.cat([a.deltas[name].up.weight for a in self.adapters], 1))
                for name in self.adapters[0].deltas}
        return self._stacked

    def _hook(self, name: str, layer: nn.Module):
        def add_deltas(module: nn.Module, inputs: tuple[torch.Tensor], out: torch.Tensor):
            w = self._weights
            if w is None or not len(self.adapters):
                return out
            if self._convs_merged and isinstance(layer, nn.Conv2d):
                return out  # its weight already holds the merged deltas (`forward`, batch 1)
            down, up = self._stack()[name]
            # Each adapter's rank-r slice of the stacked path, scaled by its routing weight
            # for each input: sum_d w_d * scale_d * B_d A_d x in two calls for any count.
            ranks = torch.tensor([a.config.rank for a in self.adapters], device=w.device)
            scales = torch.tensor([a.scale for a in self.adapters], device=w.device)
            gate = torch.repeat_interleave(w * scales, ranks, dim=1)  # [B, sum of ranks]
            if isinstance(layer, nn.Conv2d):
                h = F.conv2d(inputs[0], down, None, layer.stride, layer.padding)
                return out + F.conv2d(h * gate[:, :, None, None], up)
            return out + F.linear(F.linear(inputs[0], down) * gate, up)
        return add_deltas

    @contextmanager
    def routed(self, weights: torch.Tensor):
        self._weights = weights
        try:
            yield
        finally:
            self._weights = None

    def forward(self, pixels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised embeddings [B, D]."""
        if weights is not None and weights.shape != (len(pixels), len(self.adapters)):
            raise ValueError(f"routing weights of shape {tuple(weights.shape)} for "
                             f"{len(pixels)} inputs and {len(self.adapters)} adapters")
        if weights is not None and len(pixels) == 1 and not self.training and len(self.adapters):
            return self._single(pixels, weights)
        with self.routed(weights):
            return F.normalize(self.tower(pixels), dim=-1)

    def _single(self, pixels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """One input (a query): merge the convolutions' weights, whose low-rank paths would
        run at every pixel, and keep the projection's low-rank path, which runs once."""
        if self._dense is None:  # every conv's dense delta, flattened side by side
            self._dense = torch.stack([torch.cat([a.deltas[_key(p)].merged().flatten() * a.scale
                                                  for p, _ in self._conv_paths()])
                                       for a in self.adapters])  # [n adapters, conv weights]
        delta = weights[0] @ self._dense  # one product merges every conv
        merged, start = {}, 0
        for path, layer in self._conv_paths():
            n = layer.weight.numel()
            merged[f"{path}.weight"] = layer.weight + delta[start:start + n].view_as(layer.weight)
            start += n
        self._convs_merged = True
        try:
            with self.routed(weights):
                out = torch.func.functional_call(self.tower, merged, (pixels,))
        finally:
            self._convs_merged = False
        return F.normalize(out, dim=-1)

    def _conv_paths(self) -> list[tuple[str, nn.Conv2d]]:
        return [(p, m) for p, m in adapted_layers(self.tower).items() if isinstance(m, nn.Conv2d)]


    def merged_weights(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tower's adapted weights with the adapters merged in by `weights` [n]."""
        params = dict(self.tower.named_parameters())
        out = {}
        for path in adapted_layers(self.tower):
            w = params[f"{path}.weight"]
            for d, adapter in enumerate(self.adapters):
                if weights[d] != 0:
                    w = w + weights[d] * adapter.scale * adapter.deltas[_key(path)].merged()
            out[f"{path}.weight"] = w
        return out

    def merged(self, pixels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Embed inputs that share one routing row with literally merged weights (what
        `forward` computes without materialising them; kept to check that it does)."""
        merged = self.merged_weights(weights)
        return F.normalize(torch.func.functional_call(self.tower, merged, (pixels,)), dim=-1)

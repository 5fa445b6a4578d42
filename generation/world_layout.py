"""Text -> scene layout: the world generator's reading of the dialog.

A denoiser that must find "red" and "top left" in a 110-token dialog by cross-attention
alone learns slowly: trained 3,000 steps that way, it painted the background and faint blobs.
So the generator reads in two stages, as layout-grounded diffusion does (text -> layout ->
image): this parser turns the text tower's states into a layout, a belief about every cell of
the 3x3 grid (is an object there; its colour, shape, size, fill) and about the scene
(background, style, object count), trained with cross-entropy against the world's ground
truth. The denoiser then draws from that layout as a spatial map (a local job for
convolutions) and cross-attends the parser's slot states.

Only the text is read at inference. Trained on partial texts against the whole scene, the
parser learns what is known and what is not: for "a red circle" it is sure of the colour and
shape and spreads the position over the grid, and the drawing follows that uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from dialog.query import MAX_CLAUSES, split_clauses
from world.scene import COLOURS, FILLS, POSITIONS, SHAPES, SIZES, STYLE_NAMES, Scene

CELLS = len(POSITIONS)
# Per cell: present, then colour / shape / size / fill; per scene: background / style / count
# (the count is a training target only: it teaches "three objects" to the presence beliefs).
CELL_GROUPS = {"colour": len(COLOURS), "shape": len(SHAPES), "size": len(SIZES),
               "fill": len(FILLS)}
SCENE_GROUPS = {"background": len(COLOURS), "style": len(STYLE_NAMES), "count": 4}
CELL_WIDTH = 1 + sum(CELL_GROUPS.values())
# What the denoiser sees per pixel: its cell's features, the background and the style.
MAP_CHANNELS = CELL_WIDTH + len(COLOURS) + len(STYLE_NAMES)


def scene_labels(scene: Scene) -> torch.Tensor:
    """Ground truth as class indices: [CELLS * 5 + 3] (present, colour, shape, size, fill per
    cell, -100 where no object; then background, style, count - 1)."""
    cells = torch.full((CELLS, 5), -100, dtype=torch.long)
    cells[:, 0] = 0
    for obj in scene.objects:
        cells[POSITIONS.index(obj.position)] = torch.tensor([
            1, list(COLOURS).index(obj.colour), SHAPES.index(obj.shape),
            SIZES.index(obj.size), FILLS.index(obj.fill)])
    return torch.cat([cells.flatten(), torch.tensor([
        list(COLOURS).index(scene.background), STYLE_NAMES.index(scene.style),
        len(scene.objects) - 1])])


@dataclass
class Layout:
    slots: torch.Tensor  # [B, CELLS + 1, width]: one state per cell, one for the scene
    cell_logits: torch.Tensor  # [B, CELLS, CELL_WIDTH]
    scene_logits: torch.Tensor  # [B, sum(SCENE_GROUPS)]

    def cell_features(self) -> torch.Tensor:
        """[B, CELLS, CELL_WIDTH]: P(object) then its attribute distributions times P(object)."""
        present = torch.sigmoid(self.cell_logits[..., :1])
        groups = self.cell_logits[..., 1:].split(list(CELL_GROUPS.values()), dim=-1)
        return torch.cat([present, *(present * g.softmax(-1) for g in groups)], dim=-1)

    def scene_probs(self) -> dict[str, torch.Tensor]:
        groups = self.scene_logits.split(list(SCENE_GROUPS.values()), dim=-1)
        return {name: g.softmax(-1) for name, g in zip(SCENE_GROUPS, groups)}

    def per_cell(self) -> torch.Tensor:
        """[B, CELLS, MAP_CHANNELS]: each cell's features plus the background and style."""
        probs = self.scene_probs()
        return torch.cat([self.cell_features(),
                          probs["background"][:, None].expand(-1, CELLS, -1),
                          probs["style"][:, None].expand(-1, CELLS, -1)], dim=-1)

    def spatial_map(self, size: int) -> torch.Tensor:
        return expand_cells(self.per_cell(), size)

    def loss(self, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of every belief against `scene_labels` rows."""
        cells = labels[:, : CELLS * 5].view(-1, CELLS, 5)
        scene = labels[:, CELLS * 5:]
        total = F.binary_cross_entropy_with_logits(self.cell_logits[..., 0],
                                                   cells[..., 0].float())
        groups = self.cell_logits[..., 1:].split(list(CELL_GROUPS.values()), dim=-1)
        for k, logits in enumerate(groups, start=1):
            total = total + F.cross_entropy(logits.flatten(0, 1), cells[..., k].flatten(),
                                            ignore_index=-100)
        groups = self.scene_logits.split(list(SCENE_GROUPS.values()), dim=-1)
        for k, logits in enumerate(groups):
            total = total + F.cross_entropy(logits, scene[:, k])
        return total


def expand_cells(per_cell: torch.Tensor, size: int) -> torch.Tensor:
    """[B, CELLS, C] -> [B, C, size, size]: every pixel gets its grid cell's features, with
    cell borders where the renderer puts them."""
    band = ((torch.arange(size, device=per_cell.device) + 0.5) * 3 / size).long()
    cell_of = (band[:, None] * 3 + band[None, :]).flatten()  # row-major, like POSITIONS
    pixels = per_cell[:, cell_of]  # [B, size*size, C]
    return pixels.transpose(1, 2).reshape(len(pixels), per_cell.shape[-1], size, size)


class WorldLayoutParser(ModelMixin, ConfigMixin):
    """Clause token states -> Layout. One self-attention layer lets clauses see each other
    ("is there anything else? yes" then "a red star on the left"); learned queries, one per
    grid cell and one for the scene, read the result through a small transformer decoder."""

    @register_to_config
    def __init__(self, text_width: int = 384, width: int = 192, heads: int = 4,
                 encoder_layers: int = 1, decoder_layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.inp = nn.Linear(text_width, width)
        self.clause_pos = nn.Embedding(MAX_CLAUSES, width)  # clause order, lost by splitting
        layer = dict(d_model=width, nhead=heads, dim_feedforward=2 * width, dropout=dropout,
                     batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer),
                                             encoder_layers, enable_nested_tensor=False)
        self.queries = nn.Parameter(torch.randn(CELLS + 1, width) * 0.02)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer),
                                             decoder_layers)
        self.norm = nn.LayerNorm(width)
        self.cell_head = nn.Linear(width, CELL_WIDTH)
        self.scene_head = nn.Linear(width, sum(SCENE_GROUPS.values()))

    def forward(self, states: torch.Tensor, mask: torch.Tensor,
                clause_ids: torch.Tensor) -> Layout:
        """states [B, L, text_width], mask [B, L] (True = token), clause_ids [B, L]."""
        x = self.inp(states) + self.clause_pos(clause_ids)
        x = self.encoder(x, src_key_padding_mask=~mask)
        q = self.queries.expand(len(x), -1, -1)
        slots = self.norm(self.decoder(q, x, memory_key_padding_mask=~mask))
        return Layout(slots, self.cell_head(slots[:, :CELLS]), self.scene_head(slots[:, CELLS]))


def clause_states(tower, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read each prompt clause by clause with the locked `tower` (one batched call) and
    concatenate its clauses' token states: (states [B, L, W], mask [B, L], clause_ids [B, L]).
    An empty prompt reads as the empty string's states."""
    per_prompt = [split_clauses(p) or [""] for p in prompts]
    flat = [c for cs in per_prompt for c in cs]
    if hasattr(tower, "states_each"):  # remembers clauses across calls
        rows = iter(tower.states_each(flat))
    else:
        states, mask = tower(flat)
        rows = iter([states[i, mask[i]] for i in range(len(states))])
    return pack_clauses([[next(rows) for _ in cs] for cs in per_prompt])


def pack_clauses(prompts: list[list[torch.Tensor]]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per prompt, a list of clause states [Li, W] -> padded states, mask and clause ids."""
    rows = [torch.cat(cs) for cs in prompts]
    ids = [torch.cat([torch.full((len(c),), k) for k, c in enumerate(cs)]) for cs in prompts]
    length = max(len(r) for r in rows)
    states = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
    mask = torch.zeros(len(rows), length, dtype=torch.bool, device=rows[0].device)
    clause_ids = torch.zeros(len(rows), length, dtype=torch.long, device=rows[0].device)
    for i, (r, c) in enumerate(zip(rows, ids)):
        states[i, : len(r)], mask[i, : len(r)], clause_ids[i, : len(r)] = r, True, c
    return states, mask, clause_ids

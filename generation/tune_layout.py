"""Teach a world generator's layout parser new wording, keeping what its UNet reads.

The parser is the only part of the generator that reads words, and the one shipped until
2026-12-05 learned them from the captions, dialogs and free descriptions of 2026-11-24. The
training wording has grown a great deal since: on descriptions in today's training forms that
parser named the background right half the time, and a pseudo-image drawn from one found its
scene a quarter as often as one drawn from the caption (docs/BENCHMARKS.md). Training the
generator again would cost the UNet's hours and a new guidance distillation. The parser is
1.3M parameters, so this fine-tunes it alone on the varied clause corpus (v3: the
generator's six texts per scene plus two descriptions in world/varied.py's wider wording),
with the cross-entropy against the ground truth it was trained with.

What must not move is what the frozen UNet was trained to read. Its spatial map is the cells'
beliefs, which the cross-entropy ties to the truth; its cross-attention reads the parser's
slot states, which nothing ties to anything. So the loss adds an MSE between the slots and
the source parser's slots on the template texts (captions and dialogs in template wording),
which that parser already reads right: there the new parser must say the same thing the same
way, and elsewhere it learns to say it too. (The student's slots carry dropout and the
target's do not, so the MSE has a small floor; it only has to stay small.)
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import PartialState
from huggingface_hub import ModelCard

from generation.train_world import (
    LayoutTrainConfig,
    corpus_labels,
    layout_accuracy,
    text_batch,
)
from generation.world_layout import WorldLayoutParser
from training import clear_checkpoints, run_facts, train, training_curve, write_model_card
from training.loop import LOG_NAME, read_log
from world.clause_corpus import KINDS, TEMPLATE_KINDS, ClauseCorpus


@dataclass
class TuneLayoutConfig(LayoutTrainConfig):
    steps: int = 1500
    lr: float = 3e-4  # a fine-tune: a third of the parser's own peak
    warmup: int = 100
    eval_every: int = 250
    anchor: float = 10.0  # weight of the slot MSE on template texts


def tune_batches(corpus: ClauseCorpus, labels: torch.Tensor, cfg: TuneLayoutConfig
                 ) -> Callable[[torch.Generator], dict[str, torch.Tensor]]:
    template = torch.isin(corpus.text_kind, torch.tensor(TEMPLATE_KINDS))

    def sample(gen: torch.Generator) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, len(corpus.texts), (cfg.batch_size,), generator=gen)
        states, mask, clause_ids = text_batch(corpus, ids)
        return {"states": states, "mask": mask, "clause_ids": clause_ids,
                "labels": labels[corpus.text_scene[ids]], "template": template[ids]}

    return sample


def anchored_loss(frozen: WorldLayoutParser, anchor: float
                  ) -> Callable[[WorldLayoutParser, dict], torch.Tensor]:
    """Cross-entropy on every text plus `anchor` x the slots' MSE to `frozen`'s on template
    texts."""

    def loss(parser: WorldLayoutParser, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = batch["states"], batch["mask"], batch["clause_ids"]
        layout = parser(*inputs)
        total = layout.loss(batch["labels"])
        keep = batch["template"]
        if keep.any():
            with torch.no_grad():
                target = frozen(*(x[keep] for x in inputs)).slots
            total = total + anchor * F.mse_loss(layout.slots[keep], target)
        return total

    return loss


def _read(parser: WorldLayoutParser, corpus: ClauseCorpus, ids: torch.Tensor):
    device = next(parser.parameters()).device
    return parser.eval()(*(x.to(device) for x in text_batch(corpus, ids)))


@torch.no_grad()
def accuracy_by_kind(parser: WorldLayoutParser, corpus: ClauseCorpus, labels: torch.Tensor,
                     per_kind: int = 300) -> dict[str, float]:
    """`layout_accuracy` on up to `per_kind` texts of each kind, keyed "kind/measure"."""
    out = {}
    for k, name in enumerate(KINDS):
        ids = (corpus.text_kind == k).nonzero().flatten()[:per_kind]
        if len(ids):
            acc = layout_accuracy(parser, corpus, labels, ids=ids)
            out.update({f"{name.replace(' ', '_')}/{m}": v for m, v in acc.items()})
    return out


def _template_ids(corpus: ClauseCorpus, n: int) -> torch.Tensor:
    return torch.isin(corpus.text_kind, torch.tensor(TEMPLATE_KINDS)).nonzero().flatten()[:n]


@torch.no_grad()
def slot_gap(parser: WorldLayoutParser, source: WorldLayoutParser, corpus: ClauseCorpus,
             n: int = 500) -> float:
    """RMS difference of the two parsers' slots on up to `n` template texts: how far what the
    UNet cross-attends has moved where it was trained."""
    ids = _template_ids(corpus, n)
    gap = _read(parser, corpus, ids).slots - _read(source, corpus, ids).slots
    return gap.pow(2).mean().sqrt().item()


@torch.no_grad()
def slot_rms(parser: WorldLayoutParser, corpus: ClauseCorpus, n: int = 500) -> float:
    """RMS of the parser's slots on up to `n` template texts: the scale `slot_gap` is on
    (the slots are LayerNorm'ed with learned gains, so it is not 1)."""
    return _read(parser, corpus, _template_ids(corpus, n)).slots.pow(2).mean().sqrt().item()


def tune_layout(parser: WorldLayoutParser, corpus: ClauseCorpus, cfg: TuneLayoutConfig,
                out: str | Path | None = None, *, resume: bool = False,
                val: ClauseCorpus | None = None) -> tuple[WorldLayoutParser, list]:
    """Fine-tune a copy of `parser` on `corpus` (a varied clause corpus, with text kinds)."""
    if corpus.text_kind is None:
        raise ValueError("the corpus has no text kinds (a clause cache from before v3); "
                         "build it with varied=True")
    torch.manual_seed(cfg.seed)
    # train() puts the student and each batch on accelerate's device; the target goes there too
    frozen = copy.deepcopy(parser).eval().requires_grad_(False).to(PartialState().device)
    student = copy.deepcopy(parser).train().requires_grad_(True)
    evaluate = None
    if val is not None:
        val_labels = corpus_labels(val)

        def evaluate(model, step):
            return {**accuracy_by_kind(model, val, val_labels),
                    "slot_gap": slot_gap(model, frozen, val)}
    log = train(student, tune_batches(corpus, corpus_labels(corpus), cfg),
                anchored_loss(frozen, cfg.anchor), cfg, out, resume=resume, evaluate=evaluate,
                desc="tune layout parser")
    return student.eval(), log


MODEL_CARD = """# world generator, layout parser re-taught

The pipeline of `{source}` (its card follows the command below) with its layout parser
fine-tuned to read today's wording; the UNet, the scheduler and the ONNX graph are the
source's, unchanged.

- `layout/`: the source's {params:.2f}M-parameter parser, trained {steps} more steps (batch
  {batch_size}, AdamW lr {lr}, weight decay {weight_decay}, {warmup} warm-up steps then
  cosine, gradient clipping {grad_clip}; seed {seed}) on {scenes} world train scenes, eight
  texts each: the generator's six (template captions, free descriptions in training wording,
  dialogs) and two descriptions in world/varied.py's wider training wording (clause corpus
  v3; no held-out word or phrase). Loss: the cross-entropy against the ground truth it was
  trained with, plus {anchor} x the MSE between its slot states and the source parser's on
  template captions and dialogs, which the UNet cross-attends and the source reads right
  (generation/tune_layout.py); final loss {final_loss:.4f}.
- Validation ({val_scenes} val scenes, up to 300 texts of each kind): is the background, and
  the colour and shape of each object that is there, the parser's most likely reading?
  Source -> this (a partial text leaves things out, so its ceiling is below 1):

{val_table}

- Slot states on template texts moved by {slot_gap:.3f} RMS, against an RMS of
  {slot_rms:.3f} for the source's slots themselves ({slot_share:.0%}).
- Wall time: {minutes:.1f} min on {hardware}. Curve: `layout-loss.png`; log under
  `tune-layout/`.
- Fidelity by wording and on dialogs: docs/BENCHMARKS.md (`itir bench generator`).
"""


def reproduce(source: str | Path, out: str | Path, scenes: int, steps: int,
              cache_dir: str | Path, *, lr: float = 3e-4, anchor: float = 10.0,
              seed: int = 0, resume: bool = False, source_name: str | None = None,
              val_scenes: int = 1000) -> list[dict]:
    """Copy the pipeline folder `source` to `out` with its parser tuned on the varied corpus;
    README.md tells what was done and keeps the source's card below."""
    from generation.world_pipeline import WorldGeneratorPipeline
    from world.clause_corpus import cached_clause_corpus

    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise ValueError(f"--out must differ from the source ({source}): tuning in place "
                         "could not be reproduced; write elsewhere and move it")
    if not resume and out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty: give a new folder (a pipeline already "
                         "there would mix its files with the source's), or --resume a run")
    pipe = WorldGeneratorPipeline.from_pretrained(source)
    tower, size = pipe.text_tower, pipe.unet.config.sample_size
    cfg = TuneLayoutConfig(steps=steps, lr=lr, anchor=anchor, seed=seed)
    corpus = cached_clause_corpus(scenes, "train", tower, size, cache_dir, varied=True)
    val = cached_clause_corpus(val_scenes, "val", tower, size, cache_dir, varied=True)
    before = accuracy_by_kind(pipe.layout, val, corpus_labels(val))
    scale = slot_rms(pipe.layout, val)
    parser, log = tune_layout(pipe.layout, corpus, cfg, out / "tune-layout", resume=resume,
                              val=val)

    shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("tune-layout"))
    parser.save_pretrained(out / "layout")
    clear_checkpoints(out / "tune-layout")
    training_curve(out / "tune-layout" / LOG_NAME, out / "layout-loss.png",
                   "layout parser, re-taught: cross-entropy + slot anchor")
    after = next(e for e in reversed(read_log(out / "tune-layout" / LOG_NAME))
                 if "slot_gap" in e)
    kinds = [k.split("/")[0] for k in before if k.endswith("/background")]
    attrs = ("background", "colour", "shape")
    val_table = "\n".join(
        ["| text | " + " | ".join(attrs) + " |", "|---" * (len(attrs) + 1) + "|"]
        + ["| " + k.replace("_", " ") + " | " + " | ".join(
            f"{before[f'{k}/{a}']:.2f} -> {after[f'{k}/{a}']:.2f}" for a in attrs) + " |"
           for k in kinds])
    has_card = (source / "README.md").is_file()
    source_card = ModelCard.load(source / "README.md") if has_card else None
    meta = source_card.data.to_dict() if has_card else {"license": "mit",
                                                         "library_name": "diffusers"}
    meta["tags"] = list(dict.fromkeys([*meta.get("tags", ["itir"]), "layout-fine-tune"]))
    name = source_name or str(source)
    card = write_model_card(
        out / "README.md", MODEL_CARD, metadata=meta,
        command=(f"itir tune-layout {name} --scenes {scenes} --steps {steps} --lr {lr} "
                 f"--anchor {anchor} --out {out}"),
        **run_facts(cfg, log), source=name, scenes=scenes, val_scenes=val_scenes,
        val_table=val_table, slot_gap=after["slot_gap"], slot_rms=scale,
        slot_share=after["slot_gap"] / scale,
        params=sum(p.numel() for p in parser.parameters()) / 1e6)
    if has_card:
        with card.open("a") as f:
            f.write(f"\n---\n\n## The source ({name}), as its card said\n\n"
                    f"{source_card.text.strip()}\n")
    return log

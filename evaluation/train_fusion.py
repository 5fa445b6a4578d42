"""`itir train-fusion`: ADaFuSE trained on dialog files with a profile's frozen models.

The head and its loop are in fusion/train_adafuse.py (vectors only); this module brings the
dialogs, the cached embeddings (evaluation/dialog_set.py), model selection by the ChatIR
protocol on validation dialogs, and the checkpoint folder with its card.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from evaluation.chatir import compare
from evaluation.dialog_set import DialogEmbeddings
from fusion.adafuse import ADaFuSE, ADaFuSEConfig, parameter_count
from fusion.train_adafuse import TEXT_HINGE, FusionTrainConfig, train_adafuse


def chatir_validation(val: DialogEmbeddings):
    """Score a head by its mean cumulative Hits@10 over rounds on `val` (finding targets
    early and at all), logging Hits@10 at the first, middle and last round."""
    def validate(fusion: ADaFuSE) -> tuple[float, dict]:
        hits = compare(val, {"adafuse": fusion})["methods"]["adafuse"]["hits@10"]
        return float(np.mean(hits)), {"val_hits@10_r0_mid_last": [
            hits[0], hits[len(hits) // 2], hits[-1]]}
    return validate


MODEL_CARD = """# ADaFuSE for {encoder_name}

A gated dual-branch fusion head (ADaFuSE, DESIGN.md "Fusion") for the embeddings of
`{encoder}` ({dim}-d) and the pseudo-images of `{generator}` ({gen_steps} steps, guidance
{gen_guidance}, seed {gen_seed}). P = {proj}, H = {hidden}, E = {experts}, dropout
{dropout}: {params:,} parameters, {ratio:.1%} of the frozen encoders' {encoder_params:,}.

- Data: {train_dialogs} dialogs of `{train_file}` (every round's query, one pseudo-image per
  round), each step one random round per dialog; validation on {val_dialogs} dialogs of
  `{val_file}` against its corpus of {val_corpus} images.
- Training: {steps} steps, batch {batch_size}, AdamW lr {lr} (weight decay {weight_decay}),
  {warmup} warm-up steps then cosine, gradient clipping {grad_clip}, EMA {ema_decay};
  {objective}; seed {seed}; final loss {final_loss:.4f}. Kept: the weights of step
  {best_step} (best mean validation Hits@10).
- Wall time: {minutes:.1f} min on {hardware}, after the embedding caches were built.
- Validation, cumulative Hits@10 at rounds 0 / 2 / 5 / 10: ADaFuSE {val_adafuse}; text only
  {val_text}; DAR {val_dar}.
- Validation, share of dialogs whose target ranks worse than with the text alone, rounds
  0 / 2 / 5 / 10: ADaFuSE {val_worse}; DAR {val_dar_worse}.
- Test numbers: docs/BENCHMARKS.md (`itir eval`).

Use: `profile.fusion = "{out}"` (or `--set fusion={out}`); `fusion.load_fusion("{out}")`.
"""

CARD_METADATA = {"license": "mit", "library_name": "pytorch",
                 "tags": ["itir", "chat-image-retrieval", "fusion", "adafuse"]}


def _at_rounds(hits: list[float]) -> str:
    return " / ".join(f"{hits[r]:.1f}%" for r in (0, 2, 5, 10) if r < len(hits))


def _objective(text_hinge: float, hinge_corpus: int | None) -> str:
    plain = "symmetric InfoNCE with the head's learnable temperature"
    if not text_hinge:
        return plain + " (DESIGN.md's loss)"
    over = (f"over the {hinge_corpus:,} training corpus images" if hinge_corpus
            else "over the batch")
    return f"{plain}, plus {text_hinge:g} x the text hinge {over} (fusion/train_adafuse.py)"


def reproduce(out: str | Path, profile, train_file: str | Path, val_file: str | Path,
              steps: int, limit: int | None = None, val_limit: int | None = None,
              batch_size: int = 256, lr: float = 5e-5, seed: int = 0,
              text_hinge: float | None = None, hinge_over: str = "corpus",
              resume: bool = False, images_root: str | Path | None = None,
              corpus: str | Path | None = None, val_corpus: str | Path | None = None,
              val_images_root: str | Path | None = None) -> dict:
    """Embed (or reuse the caches of) both dialog sets with the profile's frozen encoder and
    generator, train, and write the checkpoint folder `out` with its card and loss curve
    (`text_hinge` None: the default weight, `TEXT_HINGE`; `hinge_over`: "corpus", the whole
    training corpus, or "batch")."""
    if hinge_over not in ("corpus", "batch"):
        raise ValueError(f"hinge_over must be 'corpus' or 'batch', not {hinge_over!r}")
    from engine.factory import load_models
    from evaluation.dialog_set import embed_dialog_set, read_dialog_set
    from fusion import DAR, TextOnly
    from training.card import run_facts, write_model_card
    from training.loop import clear_checkpoints
    from training.plots import training_curve

    models = load_models(profile)
    if models.generator is None:
        raise ValueError(f"profile {profile.name!r} has no generator: ADaFuSE fuses a "
                         "pseudo-image, so it needs one")
    encoder, generator, seed_g = models.encoder, models.generator, profile.generator.seed
    train_set = read_dialog_set(train_file, corpus, images_root, limit=limit)
    val_images_root = val_images_root if val_images_root is not None else images_root
    val_set = read_dialog_set(val_file, val_corpus, val_images_root, limit=val_limit)
    train_emb = embed_dialog_set(train_set, encoder, generator, seed=seed_g)
    val_emb = embed_dialog_set(val_set, encoder, generator, seed=seed_g)
    model_cfg = ADaFuSEConfig.for_encoder(encoder.dim, encoder.num_parameters, encoder.identity)
    text_hinge = TEXT_HINGE if text_hinge is None else text_hinge
    cfg = FusionTrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                            text_hinge=text_hinge)
    on_corpus = hinge_over == "corpus" and bool(text_hinge)
    fusion, log, best = train_adafuse(
        train_emb.text, train_emb.pseudo(1), train_emb.corpus[train_emb.targets], model_cfg,
        cfg, chatir_validation(val_emb), out, resume=resume,
        corpus=train_emb.corpus if on_corpus else None,
        target_ids=train_emb.targets if on_corpus else None)
    out = Path(out)
    fusion.save_pretrained(out)
    val = compare(val_emb, {"adafuse": fusion, "text": TextOnly(), "dar": DAR()})["methods"]
    params = parameter_count(model_cfg)
    write_model_card(
        out / "README.md", MODEL_CARD, metadata=CARD_METADATA,
        command=(f"itir train-fusion --profile {profile.name} --dialogs {train_file} "
                 f"--val-dialogs {val_file} --steps {steps}"
                 + (f" --limit {limit}" if limit else "")
                 + (f" --val-limit {val_limit}" if val_limit else "")
                 + f" --text-hinge {text_hinge:g}"
                 + (" --hinge-over batch" if hinge_over == "batch" else "")
                 + (f" --corpus {corpus}" if corpus else "")
                 + (f" --val-corpus {val_corpus}" if val_corpus else "")
                 + (f" --images {images_root}" if images_root else "")
                 + (f" --val-images {val_images_root}" if val_images_root != images_root
                    else "")
                 + f" --out {out}"),
        **run_facts(cfg, log), **asdict(model_cfg), encoder_name=profile.encoder.kind,
        generator=generator.identity, gen_steps=generator.steps,
        gen_guidance=generator.guidance, gen_seed=seed_g, params=params,
        encoder_params=encoder.num_parameters, ratio=params / encoder.num_parameters,
        train_dialogs=len(train_set.dialogs), train_file=train_file,
        val_dialogs=len(val_set.dialogs), val_file=val_file, val_corpus=len(val_set.corpus),
        best_step=best.get("step"), out=out,
        objective=_objective(text_hinge, len(train_emb.corpus) if on_corpus else None),
        val_adafuse=_at_rounds(val["adafuse"]["hits@10"]),
        val_text=_at_rounds(val["text"]["hits@10"]), val_dar=_at_rounds(val["dar"]["hits@10"]),
        val_worse=_at_rounds(val["adafuse"]["degradation_by_round"]),
        val_dar_worse=_at_rounds(val["dar"]["degradation_by_round"]))
    training_curve(out / "train.log.jsonl", out / "loss.png",
                   "ADaFuSE: InfoNCE + text hinge" if text_hinge else "ADaFuSE: InfoNCE loss")
    clear_checkpoints(out)
    return best

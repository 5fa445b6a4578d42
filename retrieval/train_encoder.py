"""Train the world dual encoder (image tower + text head) against the locked text tower.

Symmetric InfoNCE over in-batch negatives, one text per scene per step. A quarter of the
images are shrunk to 32x32 first: generated pseudo-images are 32x32, and the image tower
has to embed them next to the real 64x64 gallery images. A head that owns copies of the
tower's top layers (`text_layers`) trains them at a fraction of the learning rate: they
start from pretrained weights whose knowledge of words is the point of keeping them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from retrieval.weights import tensor_digest
from retrieval.world_encoder import WorldDualEncoder, WorldEncoderConfig, with_tower_layers
from training import (
    TrainConfig,
    clear_checkpoints,
    run_facts,
    symmetric_infonce,
    train,
    training_curve,
    write_model_card,
)
from training.loop import Evaluate
from world.corpus import TEXTS_PER_SCENE, Corpus, EmbeddedCorpus, check_texts_per_scene
from world.render import RENDER_VERSION

if TYPE_CHECKING:
    from retrieval.encoders import WorldEncoder
    from retrieval.text_tower import TextTower


@dataclass
class EncoderTrainConfig(TrainConfig):
    steps: int = 1500
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.05
    eval_every: int = 500
    batch_size: int = 128  # scenes per step, one text each
    low_res_fraction: float = 0.25
    tower_lr_scale: float = 0.2  # the copied tower layers' learning rate, as a multiple of lr
    # Text-side fine-tunes only: "corpus" ranks each text against every training image, not
    # the batch's (finetune_text_head).
    negatives: str = "batch"

    def __post_init__(self):
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, not {self.negatives!r}")


NEGATIVES = ("batch", "corpus")


def shrink(images: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Round-trip a random `fraction` of the batch through 32x32."""
    pick = torch.rand(len(images), generator=gen) < fraction
    if not pick.any():
        return images.float()
    out = images.float().clone()
    small = F.interpolate(out[pick], size=32, mode="bilinear", antialias=True)
    out[pick] = F.interpolate(small, size=images.shape[-1], mode="bilinear")
    return out


def scene_text_picker(corpus: Corpus | EmbeddedCorpus, batch_size: int
                      ) -> Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]:
    """Draws `batch_size` distinct scenes and one of each scene's texts at random."""
    n_scenes = len(corpus.images)
    # Texts grouped by scene: scene s owns by_scene[first[s] : first[s] + count[s]].
    by_scene = torch.argsort(corpus.text_scene, stable=True)
    count = torch.bincount(corpus.text_scene, minlength=n_scenes)
    first = count.cumsum(0) - count

    def pick(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        scenes = torch.randperm(n_scenes, generator=gen)[:batch_size]
        offset = (torch.rand(len(scenes), generator=gen) * count[scenes]).long()
        return scenes, by_scene[first[scenes] + offset]

    return pick


def encoder_batches(corpus: Corpus | EmbeddedCorpus, cfg: EncoderTrainConfig, *,
                    image_embeddings: torch.Tensor | None = None,
                    text_embeddings: torch.Tensor | None = None
                    ) -> Callable[[torch.Generator], dict[str, torch.Tensor]]:
    """Batch sampler: `batch_size` distinct scenes, each with one of its texts at random.
    A side given as precomputed embeddings (a frozen side) comes as those, not as inputs."""
    pick = scene_text_picker(corpus, cfg.batch_size)

    def sample(gen: torch.Generator) -> dict[str, torch.Tensor]:
        scenes, text_ids = pick(gen)
        batch = {"scenes": scenes}
        if image_embeddings is None:
            batch["images"] = shrink(corpus.images[scenes], cfg.low_res_fraction, gen)
        else:
            batch["image_embeddings"] = image_embeddings[scenes]
        if text_embeddings is None:
            batch["states"], batch["mask"] = corpus.batch_states(text_ids)
        else:
            batch["text_embeddings"] = text_embeddings[text_ids]
        return batch

    return sample


def contrastive_loss(model: WorldDualEncoder, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Symmetric InfoNCE: each image against every text of the batch, and vice versa. With
    precomputed `image_embeddings` (or `text_embeddings`) in the batch that side is frozen
    and not run."""
    img = (batch["image_embeddings"] if "image_embeddings" in batch
           else model.encode_image(batch["images"]))
    txt = (batch["text_embeddings"] if "text_embeddings" in batch
           else model.encode_text(batch["states"], batch["mask"]))
    return symmetric_infonce(model.logit_scale.exp().clamp(max=100) * img @ txt.T)


def corpus_text_loss(image_embeddings: torch.Tensor
                     ) -> Callable[[WorldDualEncoder, dict[str, torch.Tensor]], torch.Tensor]:
    """Text->image InfoNCE against every corpus image (`image_embeddings`, frozen), not only
    the batch's. Search ranks a query among the whole gallery, where scenes that differ in
    one attribute sit side by side; a random batch of 128 of 20,000 scenes rarely holds such
    a twin, so in-batch negatives stop teaching once the easy ones are apart."""
    on_device = {}  # the training loop moves the model and batches, not this closure's data

    def loss(model: WorldDualEncoder, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        txt = model.encode_text(batch["states"], batch["mask"])
        images = on_device.setdefault(txt.device, image_embeddings.to(txt.device))
        logits = model.logit_scale.exp().clamp(max=100) * txt @ images.T
        return F.cross_entropy(logits, batch["scenes"])
    return loss


@torch.no_grad()
def recall_at(model: WorldDualEncoder, corpus: Corpus, kind: int = 0,
              ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Text->image recall over the corpus' scenes, using one text of `kind` per scene."""
    model.eval()
    device = model.logit_scale.device
    img = torch.cat([model.encode_image(corpus.images[i:i + 256].to(device))
                     for i in range(0, len(corpus.images), 256)])
    ids = torch.nonzero(corpus.text_kind == kind).squeeze(1)
    txt = []
    for i in range(0, len(ids), 256):
        states, mask = corpus.batch_states(ids[i:i + 256])
        txt.append(model.encode_text(states.to(device), mask.to(device)))
    txt = torch.cat(txt)
    target = corpus.text_scene[ids].to(device)
    scores = txt @ img.T
    rank = (scores > scores.gather(1, target[:, None])).sum(1)
    return {f"R@{k}": float((rank < k).float().mean()) for k in ks}


def _batch_negatives_only(cfg: EncoderTrainConfig, what: str) -> None:
    if cfg.negatives != "batch":  # the images' embeddings move while the tower trains
        raise ValueError(f"{what} trains the image tower, so it ranks against the batch's "
                         "images only: negatives='corpus' is for text-side fine-tunes")


def _lr_scales(model: WorldDualEncoder, cfg: EncoderTrainConfig) -> dict[str, float]:
    return {"text.tower_top.": cfg.tower_lr_scale} if model.config.text_layers else {}


def train_encoder(corpus: Corpus, model_cfg: WorldEncoderConfig, cfg: EncoderTrainConfig,
                  out: str | Path | None = None, *, resume: bool = False,
                  evaluate: Evaluate | None = None, tower_layers: torch.nn.ModuleList | None = None
                  ) -> tuple[WorldDualEncoder, list[dict]]:
    """A freshly initialised encoder trained on `corpus`; with `out`, a resumable run there.
    With `tower_layers` (`TextTower.top_layers(k)`) the head owns and trains those too, and
    `corpus` must hold the states from below them."""
    _batch_negatives_only(cfg, "training from scratch")
    torch.manual_seed(cfg.seed)
    model = WorldDualEncoder(model_cfg)
    if tower_layers is not None:
        model = with_tower_layers(model, tower_layers)
    log = train(model, encoder_batches(corpus, cfg), contrastive_loss, cfg, out, resume=resume,
                evaluate=evaluate, desc="train encoder", lr_scales=_lr_scales(model, cfg))
    return model, log


def finetune_text_head(model: WorldDualEncoder, corpus: Corpus, cfg: EncoderTrainConfig,
                       out: str | Path | None = None, *, resume: bool = False,
                       evaluate: Evaluate | None = None) -> list[dict]:
    """Go on training `model`'s text head (and temperature) with the image tower frozen.

    New wording only needs the text side to move, and a frozen image tower keeps every
    gallery's image embeddings as they were: only the query side of search changes."""
    model.image.requires_grad_(False).eval()
    with torch.no_grad():
        image_embeddings = torch.cat([model.encode_image(corpus.images[i:i + 256])
                                      for i in range(0, len(corpus.images), 256)])
    loss = (contrastive_loss if cfg.negatives == "batch"
            else corpus_text_loss(image_embeddings))
    try:
        return train(model, encoder_batches(corpus, cfg, image_embeddings=image_embeddings),
                     loss, cfg, out, resume=resume, evaluate=evaluate,
                     desc="fine-tune text head", lr_scales=_lr_scales(model, cfg))
    finally:
        model.image.requires_grad_(True)


def finetune_image_tower(model: WorldDualEncoder, corpus: Corpus | EmbeddedCorpus,
                         cfg: EncoderTrainConfig, out: str | Path | None = None, *,
                         resume: bool = False, evaluate: Evaluate | None = None) -> list[dict]:
    """Go on training `model`'s image tower (and temperature) with the text side frozen.

    The mirror of `finetune_text_head`: when the images change (a renderer fix, a new look),
    or the tower has seen too few of them, only the image side needs to move, and a frozen
    text side keeps every query embedding as it was; galleries and pseudo-images are embedded
    again. (The encoder's identity still changes, so caches keyed by it, and fusion heads
    trained for it, are redone.) An `EmbeddedCorpus` brings its texts' embeddings, made by
    this text side; a `Corpus` has them made here from its states."""
    _batch_negatives_only(cfg, "an image-tower fine-tune")
    model.text.requires_grad_(False).eval()
    if isinstance(corpus, Corpus):
        with torch.no_grad():
            text_embeddings = torch.cat([model.encode_text(*corpus.batch_states(ids))
                                         for ids in torch.arange(len(corpus.texts)).split(512)])
    else:
        made_by = f"world-text@{tensor_digest(model.text.state_dict())}/"
        if not corpus.text_identity.startswith(made_by):
            raise ValueError(f"the corpus' texts were embedded by {corpus.text_identity}, not "
                             f"by this model's text side ({made_by}...): embed them again "
                             "with it")
        text_embeddings = corpus.text_embeddings
    try:
        return train(model, encoder_batches(corpus, cfg, text_embeddings=text_embeddings),
                     contrastive_loss, cfg, out, resume=resume, evaluate=evaluate,
                     desc="fine-tune image tower")
    finally:
        model.text.requires_grad_(True)


MODEL_CARD = """# world encoder

A dual encoder for the itir world: the locked all-MiniLM-L6-v2 text tower (not stored here)
with a trained text head, and a {image_params:.2f}M-parameter CNN image tower trained from
scratch. The text head: {head}. Embeddings are {embed_dim}-d and L2-normalised.

- Data: {scenes} world train scenes (seeds 0..{last}), {which_texts} a full caption, a
  partial caption or 1-4-round dialog prefix, a full and a partial free description
  (world/phrasings.py, training forms only) and two full and one partial in varied wording
  (world/varied.py: a grammar of places, corners said as two edges, more frames, joins and
  attribute words, unknown words in place of 8% of attribute words; no held-out word or
  phrase){embedded_by};
  {image_size}x{image_size} images (renderer version {render_version}), a quarter of them
  shrunk to 32x32 and back.
- {origin}
- Training: {steps} steps, batch {batch_size}, AdamW lr {lr} (weight decay {weight_decay}),
  {warmup} warm-up steps then cosine; {loss_words} with a learnable temperature;
  seed {seed}; final loss {final_loss:.4f}.
- Wall time: {minutes:.1f} min on {hardware}. Loss curve: `loss.png`; log: `train.log.jsonl`.
- Validation ({val_scenes} val scenes, text->image): full caption {val_metrics}; free
  description {val_free}
- Test numbers: docs/BENCHMARKS.md.

Use (config.json + model.safetensors):

```python
from retrieval.world_encoder import WorldDualEncoder
model = WorldDualEncoder.from_pretrained("{out}")
# its text head reads the token states of {text_tower}
```
"""

def _head_words(model_cfg: WorldEncoderConfig, cfg: EncoderTrainConfig) -> str:
    if not model_cfg.text_layers:
        return "one attention layer reading the tower's last states"
    return (f"copies of the tower's top {model_cfg.text_layers} layers (started from its own\n"
            f"weights, trained at {cfg.tower_lr_scale}x the learning rate), then one attention "
            f"layer;\nit reads the tower's states from below those layers")


CARD_METADATA = {"license": "mit", "library_name": "pytorch",
                 "tags": ["itir", "text-to-image-retrieval", "dual-encoder",
                          "pytorch_model_hub_mixin"]}


def _query_side(init: str | Path, tower: TextTower, onnx_folder: str | Path | None
                ) -> WorldEncoder:
    """`init`'s encoder as the app on a CPU embeds queries (its text side's ONNX int8 graph,
    ~6x faster than eager float32 there), to embed an image-tower run's texts once. Always on
    the CPU, so the image tower learns the queries a laptop searches with, whatever device
    trains it."""
    from retrieval.encoders import WorldEncoder

    return WorldEncoder(init, tower, device="cpu", runtime="auto", onnx_folder=onnx_folder,
                        quantize="int8")


def reproduce(out: str | Path, scenes: int, steps: int, cache_dir: str | Path,
              batch_size: int = 128, val_scenes: int = 1000, seed: int = 0,
              resume: bool = False, init: str | Path | None = None, part: str = "text",
              lr: float | None = None, text_layers: int = 0, negatives: str = "batch",
              texts_per_scene: int | None = None, onnx_folder: str | Path | None = None
              ) -> dict:
    """Build (or reuse) the corpora, train, and write the model folder `out`: config.json,
    model.safetensors, README.md, train.log.jsonl, loss.png. Returns the val recall.

    With `init` (a saved encoder folder) the run starts from those weights and trains only
    one `part`: the text head (`finetune_text_head`) or the image tower
    (`finetune_image_tower`); without, everything is trained from scratch. `text_layers`
    gives the text head a trained copy of the tower's top layers (a head that has some keeps
    them and takes fresh copies of the layers below, up to `text_layers`; 0 or the count it
    owns trains those; fewer is refused). An image-tower run reads an `EmbeddedCorpus`:
    the full caption and `texts_per_scene - 1` other texts of each scene (default 3 in all),
    embedded once the way the app on a CPU embeds queries (`_query_side`; its ONNX graph is
    kept in `onnx_folder`)."""
    if part not in ("text", "image"):
        raise ValueError(f"part must be 'text' or 'image', not {part!r}")
    if texts_per_scene is not None and part != "image":
        raise ValueError("--texts-per-scene picks the texts an image-tower run embeds once: "
                         "give it with --part image")
    texts_per_scene = TEXTS_PER_SCENE if texts_per_scene is None else texts_per_scene
    check_texts_per_scene(texts_per_scene)
    if part != "text" and init is None:
        raise ValueError("training only the image tower needs a trained encoder to start "
                         "from: give --init FOLDER")
    if text_layers and part != "text":
        raise ValueError("tower layers belong to the text head: train them with --part text")
    # Its own checks (negatives among them) before any corpus is built.
    cfg = EncoderTrainConfig(steps=steps, batch_size=batch_size, seed=seed, negatives=negatives,
                             **({"lr": lr} if lr is not None else {}))
    if negatives != "batch" and (init is None or part != "text"):
        raise ValueError("--negatives corpus ranks texts against a frozen image tower's "
                         "embeddings: give --init FOLDER --part text")
    from retrieval.text_tower import TextTower
    from world.corpus import cached_corpus, cached_embedded_corpus

    tower = TextTower()
    model = WorldDualEncoder.from_pretrained(str(init)) if init is not None else None
    owned = model.config.text_layers if model is not None else 0
    if owned and text_layers and text_layers < owned:
        raise ValueError(f"{init} already owns {owned} tower layers; give --text-layers "
                         f"{owned} or more (or none) to go on training them")
    # `top_layers` refuses more layers than the tower has, before any corpus is built.
    tower_layers = tower.top_layers(text_layers) if text_layers > owned else None
    if model is not None and tower_layers is not None:
        model, tower_layers = with_tower_layers(model, tower_layers), None
    model_cfg = model.config if model is not None else WorldEncoderConfig()
    layer = -1 - max(owned, text_layers)
    corpus_runtime = None
    if part == "image":
        query_side = _query_side(init, tower, onnx_folder)
        corpus_runtime = query_side.runtime
        corpus = cached_embedded_corpus(scenes, "train", query_side, model_cfg.image_size,
                                        cache_dir, texts_per_scene)
        del query_side
    else:
        corpus = cached_corpus(scenes, "train", tower, model_cfg.image_size, cache_dir, layer)
    val = cached_corpus(val_scenes, "val", tower, model_cfg.image_size, cache_dir, layer)
    del tower
    out = Path(out)
    def evaluate(m, step):
        return {"val_full_caption": recall_at(m, val), "val_free": recall_at(m, val, kind=3)}

    if model is None:
        model, log = train_encoder(corpus, model_cfg, cfg, out, resume=resume,
                                   evaluate=evaluate, tower_layers=tower_layers)
        model_cfg = model.config
        origin = "Trained from scratch."
    else:
        finetune = finetune_text_head if part == "text" else finetune_image_tower
        log = finetune(model, corpus, cfg, out, resume=resume, evaluate=evaluate)
        frozen, trained = (("image tower", "text head") if part == "text"
                           else ("text side", "image tower"))
        origin = (f"Fine-tuned from `{init}` (its own card tells how that was trained): the "
                  f"{frozen} frozen, so its embeddings are unchanged; only the {trained} "
                  f"and temperature trained here. The original card: `{init}/README.md`.")
    metrics = log[-1]["val_full_caption"]  # the loop evaluates the final weights
    model.save_pretrained(out)
    write_model_card(
        out / "README.md", MODEL_CARD, metadata=CARD_METADATA,
        command=(f"itir train-encoder --scenes {scenes} --steps {steps} --out {out}"
                 + (f" --init {init} --part {part}" if init else "")
                 + (f" --text-layers {text_layers}" if text_layers else "")
                 + (f" --lr {lr}" if lr is not None else "")
                 + (f" --negatives {negatives}" if negatives != "batch" else "")
                 + (f" --texts-per-scene {texts_per_scene}" if part == "image" else "")),
        origin=origin, head=_head_words(model_cfg, cfg),
        which_texts=("each with its texts:" if part == "text" else
                     f"each with its full caption and {texts_per_scene - 1} more of these, "
                     "drawn by its seed:"),
        embedded_by=("" if part == "text" else
                     f", each embedded once by the frozen text side (its {corpus_runtime} "
                     "path)"),
        loss_words=("symmetric InfoNCE over the batch" if negatives == "batch" else
                    f"text->image InfoNCE against all {scenes:,} training images"),
        **run_facts(cfg, log), **asdict(model_cfg), scenes=scenes, last=scenes - 1,
        image_params=sum(p.numel() for p in model.image.parameters()) / 1e6, out=out,
        render_version=RENDER_VERSION, val_scenes=val_scenes,
        val_metrics=", ".join(f"{k} {v:.3f}" for k, v in metrics.items()),
        val_free=", ".join(f"{k} {v:.3f}" for k, v in log[-1]["val_free"].items()))
    training_curve(out / "train.log.jsonl", out / "loss.png", "world encoder: InfoNCE loss")
    clear_checkpoints(out)  # the finished model is saved; the resumable state can go
    return metrics

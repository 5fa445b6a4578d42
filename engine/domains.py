"""`itir domain add | list | remove`: grow the profile's image domains without forgetting.

Adding a domain trains a LoRA adapter on the frozen world image tower from the new kind of
images and their captions, stores it with its prototype (retrieval/domain_store.py), and
then re-embeds only the gallery images whose routing weights changed: an image far from the
new prototype keeps its weights bit for bit (retrieval/routing.py), so its vector stays.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from engine.profile import Profile
from retrieval.domain_store import BASE, DomainStore, check_name
from retrieval.encoders import WorldEncoder, pixels
from retrieval.gallery import find_images, iter_batches
from retrieval.index import VectorIndex
from retrieval.routing import Router, style_features
from retrieval.train_adapter import DomainSet, TowerTrainConfig, train_adapter

MIN_IMAGES = 20


@dataclass
class DomainReport:
    name: str
    images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    held_out: dict = field(default_factory=dict)  # R@k before/after on held-out images
    reembedded: int = 0
    index_size: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"domain {self.name}: {self.images} images"
                 + (f", {len(self.skipped)} skipped" if self.skipped else "")]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        if self.held_out:
            h = self.held_out
            lines.append(f"  held-out {h['images']} images, text->image R@1/R@10: base "
                         f"{h['base']['R@1']}/{h['base']['R@10']} -> with the adapter "
                         f"{h['routed']['R@1']}/{h['routed']['R@10']}; routed here "
                         f"{h['routed_here']}%")
        if self.index_size:
            lines.append(f"  index: re-embedded {self.reembedded} of {self.index_size} images "
                         "(the rest route as before)")
        lines.append(f"  {self.seconds:.0f} s")
        return "\n".join(lines)


def read_captions(path: str | Path) -> dict[str, list[str]]:
    """Captions by image file: a JSON object {file: caption or [captions]}, a JSON list or
    JSON lines of {"image": file, "caption": text}. Files are paths relative to the images
    folder, or bare file names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no captions file {path}: give one with --captions")
    text = path.read_text(encoding="utf-8-sig")
    form = ('a JSON object {"file": "caption"} or a list / JSON lines of '
            '{"image": "file", "caption": "text"}')
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not {form} ({e})") from None
    try:
        items = (list(data.items()) if isinstance(data, dict)
                 else [(row["image"], row["caption"]) for row in data])
    except (KeyError, TypeError):
        raise ValueError(f"{path} is not {form}") from None
    out: dict[str, list[str]] = {}
    for image, caps in items:
        caps = [caps] if isinstance(caps, str) else caps
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise ValueError(f"{path}: the caption of {image!r} must be a string or a list of "
                             f"strings, got {caps!r}")
        key = str(image).replace("\\", "/").removeprefix("./")
        out.setdefault(key, []).extend(c.strip() for c in caps if c.strip())
    if not any(out.values()):
        raise ValueError(f"no captions in {path}; expected {form}")
    return out


def check_inputs(images: str | Path, captions: str | Path) -> dict[str, list[str]]:
    """What `domain add` can check before loading any model: the folder and the captions."""
    if not Path(images).is_dir():
        raise FileNotFoundError(f"{images} is not a folder: give the new domain's images "
                                "with --images DIR")
    return read_captions(captions)


def _world_encoder(profile: Profile, encoder) -> WorldEncoder:
    if not isinstance(encoder, WorldEncoder):
        raise ValueError(f"image domains adapt the world encoder's image tower; profile "
                         f"{profile.name!r} uses a {profile.encoder.kind} encoder")
    return encoder


def base_router(encoder: WorldEncoder, temperature: float, keep: float, n: int = 600) -> Router:
    """The base domain's prototype: world training scenes as the base tower saw them."""
    from world.render import render
    from world.scene import sample_scene, split_seed

    images = [render(sample_scene(split_seed("train", i)), encoder.image_size) for i in range(n)]
    feats = style_features(encoder.model.image, encoder.image_pixels(images))
    return Router.for_base(BASE, feats, temperature, keep)


def add_domain(profile: Profile, encoder, name: str, images: str | Path,
               captions: str | Path, steps: int | None = None, seed: int = 0) -> DomainReport:
    """Train, store and route a new image domain; update the profile's index if it exists."""
    start = time.time()
    check_name(name)
    caps = check_inputs(images, captions)
    encoder = _world_encoder(profile, encoder)
    spec = profile.domains_spec
    store = DomainStore.of(spec)
    folder = Path(images)
    report = DomainReport(name)
    pics, owners, texts = [], [], []
    found = find_images(folder)
    for batch in tqdm(iter_batches(found, 64), total=-(-len(found) // 64), desc="read",
                      unit="batch"):
        report.skipped.extend(batch.skipped)
        for path, im in zip(batch.paths, batch.images):
            rel = Path(path).relative_to(folder).as_posix()  # find_images keeps `folder` as given
            own = caps.get(rel) or caps.get(Path(path).name)
            if not own:
                report.skipped.append((path, "no caption for it in the captions file"))
                continue
            texts += own
            owners += [len(pics)] * len(own)
            # The tower's input size is all training needs; full-size images would pile up.
            pics.append(im.convert("RGB").resize((encoder.image_size,) * 2, Image.BOX))
    report.images = len(pics)
    if len(pics) < MIN_IMAGES:
        hint = ""
        if any(reason.startswith("no caption") for _, reason in report.skipped):
            hint = (f"; captions are matched by path relative to {folder} (e.g. "
                    f"{Path(found[0]).relative_to(folder).as_posix()!r}) or by file name, "
                    f"and the captions file names e.g. {next(iter(caps))!r}")
        raise ValueError(f"{len(pics)} captioned, readable images under {folder}; a domain "
                         f"needs at least {MIN_IMAGES} ({len(report.skipped)} skipped){hint}")

    order = list(range(len(pics)))
    random.Random(seed).shuffle(order)
    n_val = max(5, len(pics) // 10)
    val, train = sorted(order[:n_val]), order[n_val:]
    text_emb = torch.from_numpy(encoder.encode_texts(texts))
    owner = torch.tensor(owners)
    x = pixels(pics, encoder.image_size).to(torch.uint8)

    def subset(ids: list[int]) -> DomainSet:
        remap = torch.full((len(pics),), -1, dtype=torch.long)
        remap[torch.tensor(ids)] = torch.arange(len(ids))
        keep = remap[owner] >= 0
        return DomainSet(name, x[ids], text_emb[keep], remap[owner[keep]])

    train_set, val_set = subset(train), subset(val)
    cfg = TowerTrainConfig(steps=steps or spec.steps, batch_size=min(spec.batch_size,
                                                                     len(train)), seed=seed)
    base = encoder.model.image
    device = next(base.parameters()).device
    replaced = name in store.names
    adapter = train_adapter(base, train_set, cfg, spec.rank, encoder.base_image_identity)
    base.to(device)  # training may have moved the shared tower to the accelerator's device
    adapter.to(device)

    router = store.router() or base_router(encoder, spec.temperature, spec.keep)
    router.add(name, style_features(base, train_set.images))
    with torch.no_grad():
        base_emb = torch.nn.functional.normalize(
            base(val_set.images.float().to(device)), dim=-1).cpu()
    index = _open_index(profile, encoder)
    gallery = _gallery_style(encoder, index)
    before = _routes(encoder.router, gallery)
    store.add(name, adapter, router, {
        "images": len(train), "captions": len(train_set.text_embeddings), "steps": cfg.steps,
        "rank": spec.rank, "source": str(folder.resolve()),
        "adapter_parameters": sum(p.numel() for p in adapter.parameters())})
    encoder.use_domains(store)
    held = [pics[i] for i in val]
    routed_emb = torch.from_numpy(encoder.encode_images(held))
    w = encoder.route(held)
    report.held_out = {"images": len(val),
                       "base": val_set.recall(base_emb, digits=1),
                       "routed": val_set.recall(routed_emb, digits=1),
                       "routed_here": round(100 * float(
                           (w.argmax(1) == encoder.domains.index(name)).mean()), 1)}
    store.update_info(name, held_out=report.held_out)
    if index is not None:
        report.reembedded, report.index_size = _reroute(
            profile, encoder, index, before, _routes(encoder.router, gallery),
            also=name if replaced else None)
    report.seconds = time.time() - start
    return report


def remove_domain(profile: Profile, encoder, name: str) -> DomainReport:
    """Delete a domain's adapter and prototype; re-embed the index images that used it."""
    start = time.time()
    encoder = _world_encoder(profile, encoder)
    store = DomainStore.of(profile.domains_spec)
    index = _open_index(profile, encoder)
    gallery = _gallery_style(encoder, index)
    before = _routes(encoder.router, gallery)
    store.remove(name)
    encoder.use_domains(store)
    report = DomainReport(name)
    if index is not None:
        report.reembedded, report.index_size = _reroute(profile, encoder, index, before,
                                                        _routes(encoder.router, gallery))
    report.seconds = time.time() - start
    return report


def list_domains(profile: Profile, encoder=None) -> list[dict]:
    """One row per domain: its size, held-out numbers, and the share of the profile's
    index routed mostly to it (how gallery images and pseudo-images route)."""
    store = DomainStore.of(profile.domains_spec)
    rows = [{"domain": BASE, "images": None, "adapter_parameters": 0}]
    rows += [{"domain": n, **store.info(n)} for n in store.names]
    if encoder is not None and isinstance(encoder, WorldEncoder) and encoder.router:
        index = _open_index(profile, encoder)
        if index is not None:
            routes = _routes(encoder.router, _gallery_style(encoder, index))
            top = [max(r, key=r.get) for r in routes if r]
            for row in rows:
                row["index_share"] = round(100 * top.count(row["domain"]) / max(1, len(top)), 1)
    return rows


def _open_index(profile: Profile, encoder: WorldEncoder) -> VectorIndex | None:
    path = profile.index_path
    if not path.exists():
        return None
    index = VectorIndex.load(path)
    if index.meta.encoder != encoder.image_identity:
        print(f"itir: {path} was built with another encoder ({index.meta.encoder}); "
              "leaving it alone (rebuild it with `itir index FOLDER --rebuild`)")
        return None
    return index


def _gallery_style(encoder: WorldEncoder, index: VectorIndex | None
                   ) -> tuple[int, list[int], torch.Tensor]:
    """(index size, ids of the readable images, their style features): the gallery read
    once; routing before and after a change are both computed from it."""
    if index is None:
        return 0, [], torch.zeros(0, 0)
    ids, feats = [], []
    for kept, images in _batches(index.paths, range(len(index)), "read gallery"):
        if kept:
            ids += kept
            feats.append(encoder.style_features(images))
    return len(index), ids, torch.cat(feats) if feats else torch.zeros(0, 0)


def _routes(router: Router | None, gallery: tuple[int, list[int], torch.Tensor]
            ) -> list[dict[str, float]]:
    """Each index image's routing weights by domain name ({"base": 1.0} without domains;
    {} for an image that can no longer be read)."""
    size, ids, feats = gallery
    if router is None:
        return [{BASE: 1.0} for _ in range(size)]
    out: list[dict[str, float]] = [{} for _ in range(size)]
    for i, row in zip(ids, router.weights(feats) if ids else []):
        out[i] = {n: float(v) for n, v in zip(router.names, row) if v > 0}
    return out


def _batches(paths: list[str], ids, desc: str, size: int = 256):
    """(index ids, decoded images) of the readable images among `ids`, a batch at a time."""
    ids = list(ids)
    for start in tqdm(range(0, len(ids), size), desc=desc, unit="batch"):
        chunk = ids[start:start + size]
        batch = next(iter_batches([Path(paths[i]) for i in chunk], len(chunk)))
        readable = set(batch.paths)
        kept = [i for i in chunk if str(Path(paths[i])) in readable]
        yield kept, batch.images


def _reroute(profile: Profile, encoder: WorldEncoder, index: VectorIndex,
             before: list[dict[str, float]], after: list[dict[str, float]],
             also: str | None = None) -> tuple[int, int]:
    """Re-embed the images whose routing changed (and, with `also`, every image that uses
    that replaced domain); save the index under the encoder's new image identity."""
    changed = [i for i, (a, b) in enumerate(zip(before, after))
               if a != b or (also is not None and also in b)]
    vectors = index.vectors()
    for ids, images in _batches(index.paths, changed, "re-embed"):
        if ids:
            vectors[np.array(ids)] = encoder.encode_images(images)
    out = VectorIndex(encoder.image_identity, index.meta.dim, index.kind)
    out.add(vectors, list(index.paths))
    out.save(profile.index_path)
    return len(changed), len(index)

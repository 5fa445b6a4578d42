"""`itir bench continual`: domains arrive one by one; who remembers, who adapts, at what cost.

A base image tower is trained on the base domain only. Then each new domain arrives and every
method updates: Dynamic Adapter Routing (a LoRA adapter per domain, prototype routing, merged
per input), sequential fine-tuning, experience replay, per-domain adapters with oracle
routing, and the zero-shot base. Joint training on all domains at once is the upper bound.
After each arrival, text->image R@1/R@10 on the test split of every domain seen so far and of
one domain never trained on. Texts are embedded once by the shipped world encoder's frozen
text side; only image towers and adapters train. Every trained model is saved under the run
folder, so running the same command again goes on where a stopped run was. Training runs
wherever `training.train` puts it (a GPU when there is one); evaluation runs on the CPU.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from retrieval.adapters import DomainAdapter, RoutedImageTower
from retrieval.routing import Router, style_features
from retrieval.train_adapter import DomainSet, TowerTrainConfig, train_adapter, train_tower
from retrieval.world_encoder import ImageTower, WorldEncoderConfig
from world.domains import ARRIVALS, BASE, HELD_OUT, domain_caption, domain_scene, render_domain

EVAL_ONLY = ("test", "test_first", "query", "temperature", "keep")
METHODS = ("zero-shot", "sequential", "replay", "oracle", "dar", "joint")


@dataclass
class ContinualConfig:
    base_train: int = 8000  # base-domain training scenes
    train: int = 2000  # training scenes per arriving domain (one caption each)
    test: int = 500  # test gallery per domain; one query text per image
    test_first: int = 0  # index of the first test scene (another range: unseen seeds)
    query: str = "partial"  # partial | full: the test queries (full captions saturate R@10)
    base_steps: int = 1500
    domain_steps: int = 300  # per arriving domain, for adapters and fine-tuning alike
    finetune_lr: float = 3e-4  # sequential, replay and joint fine-tune the whole tower
    replay_per_domain: int = 100  # images kept from each earlier domain
    replay_share: float = 0.25  # of each batch
    rank: int = 8
    temperature: float = 0.1  # chosen on validation scenes (docs/BENCHMARKS.md)
    keep: float = 0.05
    image_size: int = 64
    seed: int = 0


def domain_set(name: str, split: str, n: int, encode_texts, image_size: int,
               query: str = "both", seed: int = 0, first: int = 0) -> DomainSet:
    """Render `n` scenes of domain `name` and embed their texts: `query` says which captions
    each scene gets (both a full and a partial one, either at random, full or partial)."""
    images, texts, owner = [], [], []
    for i in tqdm(range(n), desc=f"{name} {split}", unit="scene", leave=False):
        scene = domain_scene(name, split, first + i)
        rng = random.Random(scene.seed * 31 + seed)
        images.append(np.asarray(render_domain(scene, image_size)))
        kinds = {"both": (False, True), "full": (False,), "partial": (True,),
                 "either": (rng.random() < 0.5,)}[query]
        for partial in kinds:
            texts.append(domain_caption(scene, rng, partial=partial))
            owner.append(i)
    # Shortest first, so batches pad little: the text tower is most of the cost on a CPU.
    order = sorted(range(len(texts)), key=lambda j: len(texts[j]))
    sorted_emb = torch.from_numpy(encode_texts([texts[j] for j in order]))
    emb = torch.empty_like(sorted_emb)
    emb[torch.tensor(order)] = sorted_emb
    return DomainSet(name, torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
                     emb, torch.tensor(owner))


@torch.no_grad()
def embed(model, images: torch.Tensor, weights: torch.Tensor | None = None,
          batch: int = 500) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].float()
        if isinstance(model, RoutedImageTower):
            w = None if weights is None else weights[i:i + batch]
            out.append(model(x, w))
        else:
            out.append(torch.nn.functional.normalize(model(x), dim=-1))
    return torch.cat(out)


class Run:
    """One benchmark run in `folder`: data, trained models and results, each saved once."""

    def __init__(self, folder: str | Path, cfg: ContinualConfig, encode_texts):
        self.folder = Path(folder)
        self.cfg = cfg
        self.encode_texts = encode_texts
        self.folder.mkdir(parents=True, exist_ok=True)
        # Saved data and models are only reusable by a run with the same training settings
        # (the test queries and routing settings only change the evaluation).
        trained = {k: v for k, v in asdict(cfg).items() if k not in EVAL_ONLY}
        saved, wanted = self.folder / "config.json", json.dumps(trained, indent=1)
        if saved.exists() and saved.read_text() != wanted:
            raise ValueError(f"{self.folder} holds a run with other settings ({saved}); give "
                             "another --out or delete it")
        saved.write_text(wanted)
        self._style: dict[str, torch.Tensor] = {}  # routing features of training images
        self._loaded: dict[str, object] = {}  # data and models, read from disk once
        torch.manual_seed(cfg.seed)

    # -- data ---------------------------------------------------------------------------
    def data(self, name: str, split: str) -> DomainSet:
        cfg = self.cfg
        n = {"train": cfg.base_train if name == BASE else cfg.train, "test": cfg.test}[split]
        query = ("both" if name == BASE else "either") if split == "train" else cfg.query
        first = cfg.test_first if split == "test" else 0
        path = self.folder / "data" / (f"{name}-{split}-{n}-{query}"
                                       + (f"-from{first}" if first else "") + ".pt")
        if str(path) in self._loaded:
            return self._loaded[str(path)]
        if path.exists():
            self._loaded[str(path)] = DomainSet(**torch.load(path, map_location="cpu"))
            return self._loaded[str(path)]
        ds = domain_set(name, split, n, self.encode_texts, cfg.image_size, query, cfg.seed,
                        first)
        path.parent.mkdir(exist_ok=True)
        torch.save(ds.__dict__, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        self._loaded[str(path)] = ds
        return ds

    # -- models -------------------------------------------------------------------------
    def _train_cfg(self, steps: int, lr: float) -> TowerTrainConfig:
        return TowerTrainConfig(steps=steps, lr=lr, warmup=max(10, steps // 10),
                                seed=self.cfg.seed)

    def _tower(self, name: str, build) -> ImageTower:
        """A tower saved at models/NAME.pt, trained by `build(out_folder)` when missing."""
        path = self.folder / "models" / f"{name}.pt"
        if str(path) not in self._loaded:
            if path.exists():
                tower = ImageTower(WorldEncoderConfig(image_size=self.cfg.image_size))
                tower.load_state_dict(torch.load(path, map_location="cpu"))
            else:
                tower = build(self.folder / "runs" / name)
                path.parent.mkdir(exist_ok=True)
                torch.save(tower.cpu().state_dict(), path)
            self._loaded[str(path)] = tower.eval()
        return self._loaded[str(path)]

    def base(self) -> ImageTower:
        def build(out):
            torch.manual_seed(self.cfg.seed)
            tower = ImageTower(WorldEncoderConfig(image_size=self.cfg.image_size))
            return train_tower(tower, [self.data(BASE, "train")], [1.0],
                               self._train_cfg(self.cfg.base_steps, 1e-3), out,
                               resume=True, desc=f"base ({BASE})")
        return self._tower("base", build)

    def adapter(self, name: str) -> DomainAdapter:
        folder = self.folder / "adapters" / name
        if str(folder) in self._loaded:
            return self._loaded[str(folder)]
        base = self.base()
        if (folder / "model.safetensors").exists():
            self._loaded[str(folder)] = DomainAdapter.load(folder, base).eval()
            return self._loaded[str(folder)]
        base = base.cpu()
        adapter = train_adapter(base, self.data(name, "train"),
                                self._train_cfg(self.cfg.domain_steps, 1e-3), self.cfg.rank,
                                out=self.folder / "runs" / f"adapter-{name}", resume=True)
        adapter.cpu().save_pretrained(folder)
        base.cpu()
        self._loaded[str(folder)] = adapter
        return adapter

    def sequential(self, upto: int, replay: bool = False) -> ImageTower:
        """The base fine-tuned on ARRIVALS[0], then [1], ... up to index `upto` - 1."""
        kind = "replay" if replay else "sequential"
        if upto == 0:
            return self.base()

        def build(out):
            tower = copy.deepcopy(self.sequential(upto - 1, replay))
            new = ARRIVALS[upto - 1]
            sets, shares = [self.data(new, "train")], [1.0]
            if replay:  # a small buffer of every earlier domain, a quarter of each batch
                old = [BASE, *ARRIVALS[:upto - 1]]
                sets += [self._buffer(d) for d in old]
                shares = [1 - self.cfg.replay_share] + [self.cfg.replay_share / len(old)] * len(old)
            return train_tower(tower, sets, shares,
                               self._train_cfg(self.cfg.domain_steps, self.cfg.finetune_lr), out,
                               resume=True, desc=f"{kind} +{new}")
        return self._tower(f"{kind}-{upto}", build)

    def _buffer(self, name: str) -> DomainSet:
        ds = self.data(name, "train")
        keep = torch.randperm(len(ds), generator=torch.Generator().manual_seed(self.cfg.seed))
        keep = keep[:self.cfg.replay_per_domain]
        remap = torch.full((len(ds),), -1, dtype=torch.long)
        remap[keep] = torch.arange(len(keep))
        own = remap[ds.text_scene] >= 0
        return DomainSet(name, ds.images[keep], ds.text_embeddings[own],
                         remap[ds.text_scene[own]])

    def joint(self) -> ImageTower:
        def build(out):
            domains = [BASE, *ARRIVALS]
            steps = self.cfg.domain_steps * len(ARRIVALS)
            return train_tower(copy.deepcopy(self.base()), [self.data(d, "train") for d in domains],
                               [1 / len(domains)] * len(domains),
                               self._train_cfg(steps, self.cfg.finetune_lr), out, resume=True,
                               desc="joint")
        return self._tower("joint", build)

    def router(self, upto: int) -> Router:
        """Prototypes of the base and the first `upto` arrivals, from 1,000 training images
        each (their style features computed once per run)."""
        for d in [BASE, *ARRIVALS[:upto]]:
            if d not in self._style:
                self._style[d] = style_features(self.base(), self.data(d, "train").images[:1000])
        router = Router.for_base(BASE, self._style[BASE], self.cfg.temperature, self.cfg.keep)
        for d in ARRIVALS[:upto]:
            router.add(d, self._style[d])
        return router


def evaluate_all(run: Run) -> dict:
    """The accuracy matrices: after each arrival (0 = base only), every method on every
    domain seen so far plus the held-out one."""
    cfg = run.cfg
    base = run.base()
    tests = {d: run.data(d, "test") for d in [BASE, *ARRIVALS, HELD_OUT]}
    feats = {d: style_features(base, ds.images.float()) for d, ds in tests.items()}
    adapters = [run.adapter(d) for d in ARRIVALS]
    joint = run.joint()
    results: dict = {m: [] for m in METHODS}
    routing: list[dict] = []
    for k in range(len(ARRIVALS) + 1):
        seen = [BASE, *ARRIVALS[:k]]
        router = run.router(k)
        routed = RoutedImageTower(base, adapters[:k])
        models = {"zero-shot": base, "sequential": run.sequential(k),
                  "replay": run.sequential(k, replay=True), "joint": joint}
        row: dict = {m: {} for m in METHODS}
        route_row = {}
        for d in [*seen, HELD_OUT]:
            ds = tests[d]
            for m, model in models.items():
                row[m][d] = ds.recall(embed(model, ds.images))
            w = router.weights(feats[d])  # [N, 1 + k]: the base, then the adapters
            row["dar"][d] = ds.recall(embed(routed, ds.images, w[:, 1:]))
            oracle = torch.zeros(len(ds), k)
            if d in ARRIVALS[:k]:
                oracle[:, ARRIVALS.index(d)] = 1.0
            row["oracle"][d] = ds.recall(embed(routed, ds.images, oracle))
            top = w.argmax(1)
            route_row[d] = {"right": round(100 * (top == seen.index(d)).float().mean().item(), 1)
                            if d in seen else None,
                            "mean_weights": dict(zip(seen, w.mean(0).round(decimals=3).tolist()))}
        for m in METHODS:
            results[m].append(row[m])
        routing.append(route_row)
        routed.detach()
    return {"config": asdict(cfg), "domains": {"base": BASE, "arrivals": list(ARRIVALS),
                                               "held_out": HELD_OUT},
            "matrix": results, "routing": routing, "summary": summarise(results)}


def summarise(results: dict) -> dict:
    """Average R@10 after the last domain, backward transfer, held-out R@10, per method."""
    out = {}
    order = [BASE, *ARRIVALS]
    last = len(ARRIVALS)
    for m, rows in results.items():
        final = rows[last]
        avg = float(np.mean([final[d]["R@10"] for d in order]))
        # Backward transfer (Lopez-Paz & Ranzato): how a domain's R@10 moved from just after
        # it was learnt to the end, averaged over all domains but the last.
        bwt = float(np.mean([final[d]["R@10"] - rows[max(0, order.index(d))][d]["R@10"]
                             for d in order[:-1]]))
        out[m] = {"avg_R@10": round(avg, 2), "avg_R@1": round(float(np.mean(
            [final[d]["R@1"] for d in order])), 2), "bwt_R@10": round(bwt, 2),
            "held_out_R@10": final[HELD_OUT]["R@10"]}
    return out


def temperature_sweep(run: Run, temperatures: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0),
                      n: int = 300) -> dict:
    """DAR's average R@10 over the learnt domains on *validation* scenes for each routing
    temperature (how the default was chosen; the test split plays no part)."""
    base = run.base()
    routed = RoutedImageTower(base, [run.adapter(d) for d in ARRIVALS])
    domains = [BASE, *ARRIVALS]
    val = {}
    for d in domains:
        path = run.folder / "data" / f"{d}-val-{n}-{run.cfg.query}.pt"
        if not path.exists():
            ds = domain_set(d, "val", n, run.encode_texts, run.cfg.image_size, run.cfg.query,
                            run.cfg.seed)
            torch.save(ds.__dict__, path)
        val[d] = DomainSet(**torch.load(path, map_location="cpu"))
    feats = {d: style_features(base, ds.images) for d, ds in val.items()}
    chosen, out = run.cfg.temperature, {}
    for t in temperatures:
        run.cfg.temperature = t
        router = run.router(len(ARRIVALS))
        out[str(t)] = round(float(np.mean([
            ds.recall(embed(routed, ds.images, router.weights(feats[d])[:, 1:]))["R@10"]
            for d, ds in val.items()])), 2)
    run.cfg.temperature = chosen
    routed.detach()
    return out


@torch.no_grad()
def routing_latency(run: Run, repeats: int = 200) -> dict:
    """Per-query cost of routing + merging on CPU: one image, batch 1, beside the base
    forward pass it needs anyway."""
    base = run.base()
    adapters = [run.adapter(d) for d in ARRIVALS]
    router = run.router(len(ARRIVALS))
    routed = RoutedImageTower(base, adapters)
    x = run.data(ARRIVALS[-1], "test").images[:1].float()
    times = {"base": [], "routed": []}
    for i in range(repeats + 10):
        t0 = time.perf_counter()
        torch.nn.functional.normalize(base(x), dim=-1)
        t1 = time.perf_counter()
        w = router.weights(style_features(base, x))[:, 1:]
        routed(x, w)
        t2 = time.perf_counter()
        if i >= 10:
            times["base"].append(t1 - t0)
            times["routed"].append(t2 - t1)
    p50 = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    n_base = sum(p.numel() for p in base.parameters())
    n_adapter = sum(p.numel() for p in adapters[0].parameters())
    return {"base_ms": round(p50["base"], 2), "routed_ms": round(p50["routed"], 2),
            "added_ms": round(p50["routed"] - p50["base"], 2),
            "adapter_params": n_adapter, "base_tower_params": n_base,
            "adapter_share_of_tower": round(n_adapter / n_base, 4)}


def write_json(result: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1))


QUICK = ContinualConfig(base_train=400, train=200, test=100, base_steps=60, domain_steps=20)


def bench_continual(folder: str | Path, quick: bool = False, cfg: ContinualConfig | None = None,
                    latency_repeats: int = 200, test_first: int = 0) -> dict:
    """Run (or resume) the whole benchmark in `folder`; the result with routing latency."""
    from engine.paths import assets_dir
    from retrieval.encoders import WorldEncoder
    from retrieval.text_tower import TextTower

    cfg = replace(cfg or (QUICK if quick else ContinualConfig()), test_first=test_first)
    texts = WorldEncoder(assets_dir() / "world-encoder", TextTower())
    run = Run(folder, cfg, texts.encode_texts)
    result = evaluate_all(run)
    result["latency"] = routing_latency(run, latency_repeats)
    result["temperature_sweep_val_R@10"] = temperature_sweep(run, n=cfg.test)
    return result


def markdown(result: dict) -> str:
    """The summary table of a result."""
    lines = ["| method | avg R@10 | avg R@1 | backward transfer (R@10) | held-out R@10 |",
             "|---|---|---|---|---|"]
    for m, s in result["summary"].items():
        lines.append(f"| {m} | {s['avg_R@10']} | {s['avg_R@1']} | {s['bwt_R@10']:+} | "
                     f"{s['held_out_R@10']} |")
    return "\n".join(lines)

"""Compare fusions on a dialog benchmark by the ChatIR protocol (DESIGN.md "Evaluation").

Every method ranks the target in the whole corpus at every round from the same cached
embeddings (evaluation/dialog_set.py), so differences between methods are the methods'
alone. `image` is the pseudo-image by itself; every other name is a `Fusion`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation.dialog_set import DialogEmbeddings
from evaluation.metrics import bri, cumulative_hits, degradation, hits_difference_ci, target_ranks
from fusion import Fusion

KS = (1, 5, 10)
MIX_WEIGHTS = tuple(i / 10 for i in range(11))  # the pseudo-image's weight in a static mix


def method_ranks(emb: DialogEmbeddings, method: Fusion | str, k: int = 1,
                 image: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The target's rank [N, R] under `method`, and its mean decision per round.

    `image` [N, R, D] replaces the pseudo-image embeddings (controls: shuffled, corrupted)."""
    n, rounds, _ = emb.text.shape
    g = image if image is not None else (emb.pseudo(k) if emb.image is not None else None)
    ranks = np.zeros((n, rounds), np.int64)
    decisions: dict[str, list] = {}
    for r in range(rounds):
        if method == "image":
            query = g[:, r]
        else:
            fused = method(emb.text[:, r], None if g is None else g[:, r], np.full(n, r))
            query = fused.query
            for key, value in fused.decision.items():
                decisions.setdefault(key, []).append(
                    np.asarray(value, np.float64).mean(0).round(4).tolist())
        ranks[:, r] = target_ranks(query @ emb.corpus.T, emb.targets)
    return ranks, decisions


def hindsight_mix_ranks(emb: DialogEmbeddings, k: int = 1,
                        weights: tuple[float, ...] = MIX_WEIGHTS, chunk: int = 256,
                        image: np.ndarray | None = None) -> np.ndarray:
    """[N, R] the target's best rank over the static mixes (1 - w) t + w g, with w picked from
    `weights` for each dialog and round in hindsight.

    A ceiling, not a method: no fusion that mixes text and pseudo-image with one of these
    weights per turn (text, DAR, add) finds a target sooner. A head that transforms them, as
    ADaFuSE's experts do, is not bound by it, but a ceiling far above every method says the
    pseudo-image leaves room that fusion has not taken, and one near them says it does not.
    Picking in hindsight also profits from noise: the same ceiling with another dialog's
    pseudo-images (`image`, unit-norm like g: the shuffled control) says how much."""
    g = emb.pseudo(k) if image is None else image
    n, rounds, _ = emb.text.shape
    best = np.zeros((n, rounds), np.int64)
    for a in range(0, n, chunk):  # [chunk, M] score matrices: a 200,000-image corpus fits
        rows = slice(a, min(a + chunk, n))
        for r in range(rounds):
            # Scores are linear in the query, so mixing the score matrices ranks as the mixed
            # query would; t and g are unit-norm, so w is DAR's image weight.
            text_scores = emb.text[rows, r] @ emb.corpus.T
            image_scores = g[rows, r] @ emb.corpus.T
            best[rows, r] = np.min([target_ranks((1 - w) * text_scores + w * image_scores,
                                                 emb.targets[rows]) for w in weights], axis=0)
    return best


def summarise(ranks: np.ndarray, text_ranks: np.ndarray) -> dict:
    worse = degradation(ranks, text_ranks)
    return {**{f"hits@{k}": cumulative_hits(ranks, k).round(2).tolist() for k in KS},
            "bri": round(bri(ranks), 4),
            "degradation": round(float(worse.mean()), 2),
            "degradation_by_round": worse.round(2).tolist()}


def compare(emb: DialogEmbeddings, methods: dict[str, Fusion | str], k: int = 1,
            image: np.ndarray | None = None, intervals: bool = False) -> dict:
    """{"dialogs": N, "corpus": M, "methods": {name: summary}} (text-only is the reference
    for the degradation rate and is always computed). `intervals`: each summary also gets
    `ci95_minus`, the 95% interval of its Hits@1/10 minus every other method's, per round."""
    from fusion import TextOnly

    text_ranks, _ = method_ranks(emb, TextOnly())
    out = {"dialogs": len(emb.targets), "corpus": len(emb.corpus), "k": k, "methods": {}}
    all_ranks = {"text": text_ranks}
    for name, method in methods.items():
        ranks, decisions = method_ranks(emb, method, k, image)
        all_ranks[name] = ranks
        out["methods"][name] = {**summarise(ranks, text_ranks), **(
            {"mean_decision_by_round": decisions} if decisions else {})}
    for name in methods if intervals else ():  # how sure each difference is, per round
        out["methods"][name]["ci95_minus"] = {
            other: {f"hits@{j}": hits_difference_ci(all_ranks[name], ranks, j).round(2).tolist()
                    for j in (1, 10)}
            for other, ranks in all_ranks.items() if other != name}
    return out


def markdown_table(result: dict, rounds: tuple[int, ...] = (0, 1, 2, 3, 5, 7, 10)) -> str:
    """Cumulative Hits@1/5/10 at some rounds, BRI and degradation, one row per method."""
    length = min(len(m["hits@1"]) for m in result["methods"].values())
    rounds = tuple(r for r in rounds if r < length) or (length - 1,)
    head = " | ".join(f"r{r} @1/@5/@10" for r in rounds)
    worse = all("degradation" in m for m in result["methods"].values())
    lines = [f"| method | {head} | BRI |" + (" worse than text |" if worse else ""),
             "|---" * (len(rounds) + 2 + worse) + "|"]
    for name, m in result["methods"].items():
        cells = " | ".join("/".join(f"{m[f'hits@{k}'][r]:.1f}" for k in KS) for r in rounds)
        lines.append(f"| {name} | {cells} | {m['bri']:.3f} |"
                     + (f" {m['degradation']:.1f}% |" if worse else ""))
    return "\n".join(lines)


def difference_lines(result: dict, reference: str = "text", k: int = 10) -> str:
    """Each method minus `reference` in cumulative Hits@k, per round: its 95% interval."""
    lines = []
    for name, m in result["methods"].items():
        ci = m.get("ci95_minus", {}).get(reference)
        if ci is None:
            continue
        cells = " ".join(f"r{r} [{lo:+.1f}, {hi:+.1f}]"
                         for r, (lo, hi) in enumerate(ci[f"hits@{k}"]))
        lines.append(f"{name} - {reference}, Hits@{k}, 95% interval: {cells}")
    return "\n".join(lines)


def plot(result: dict, out: str | Path, title: str = "") -> Path:
    """Hits@10 and Hits@1 against round, one line per method; a result that compares numbers
    of pseudo-images (`by_k`) adds, for each method that draws, a line per other K in the
    method's colour, dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.plots import save_figure

    by_k = result.get("by_k", {})
    main_k = result.get("k", 1)
    colours = {name: f"C{i}" for i, name in enumerate(result["methods"])}
    lines = [(f"{name} K={main_k}" if by_k and needs_image(name) else name, m, colours[name],
              "-") for name, m in result["methods"].items()]
    dashes = iter(["--", ":", "-.", (0, (5, 1, 1, 1))])
    for k, rows in by_k.items():
        if int(k) != main_k:  # the main table's K is drawn solid already
            style = next(dashes, "--")
            lines += [(f"{name} K={k}", m, colours.get(name, "k"), style)
                      for name, m in rows.items() if needs_image(name)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, k in zip(axes, (10, 1)):
        for name, m, colour, style in lines:
            ax.plot(range(len(m[f"hits@{k}"])), m[f"hits@{k}"], linestyle=style, color=colour,
                    marker="o", ms=3, label=name)
        ceiling = result.get("ceiling", {})
        for m, colour, label in ((ceiling, "k", "best static mix, in hindsight"),
                                 (ceiling.get("shuffled"), "0.6", "the same, shuffled pictures")):
            if m:
                ax.plot(range(len(m[f"hits@{k}"])), m[f"hits@{k}"], linestyle=":", color=colour,
                        label=label)
        ax.set(xlabel="round", ylabel=f"cumulative Hits@{k} (%)", title=f"Hits@{k}")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize="small")
    fig.suptitle(title or f"{result['dialogs']} dialogs, corpus of {result['corpus']}")
    return save_figure(fig, out)


def check_control(control: str) -> str:
    """A control's name, checked before hours of embedding rather than after."""
    if control == "shuffled":
        return control
    name, _, fraction = control.partition(":")
    try:
        ok = name == "unrelated" and 0 < float(fraction) <= 1
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"unknown control {control!r}: shuffled, or unrelated:F with F a "
                         "fraction in (0, 1], e.g. unrelated:0.3")
    return control


def controlled_images(emb: DialogEmbeddings, control: str, k: int = 1,
                      seed: int = 0) -> np.ndarray:
    """Pseudo-image embeddings [N, R, D] under a control:
    `shuffled`: every dialog gets another dialog's pseudo-images (a gain that survives this
    does not come from the image); `unrelated:F`: a fraction F of (dialog, round) pairs get
    the pseudo-image of another dialog's same round."""
    g = emb.pseudo(k)
    rng = np.random.default_rng(seed)
    n = len(g)
    other = (np.arange(n) + rng.integers(1, n, n)) % n  # never the dialog itself
    if control == "shuffled":
        return g[other]
    if control.startswith("unrelated:"):
        fraction = float(control.split(":", 1)[1])
        swap = rng.random(g.shape[:2]) < fraction
        return np.where(swap[..., None], g[other], g)
    raise ValueError(f"unknown control {control!r}: shuffled or unrelated:FRACTION")


def needs_image(name: str) -> bool:
    from fusion import BUILT_IN

    return name != "text" and (name not in BUILT_IN or BUILT_IN[name].uses_image)


def resolve_methods(names: list[str], profile, encoder) -> dict[str, Fusion | str]:
    """Built-in fusions by name, `image`, `adafuse` (the profile's ADaFuSE: its checkpoint
    folder, or with `fusion = "auto"` the one trained for `encoder`), or checkpoint folders."""
    from engine.engine import embedding_space
    from engine.factory import auto_fusion
    from fusion import ADaFuSE, load_fusion
    from fusion.factory import AUTO

    methods: dict[str, Fusion | str] = {}
    for name in names:
        if name == "image":
            methods[name] = "image"
        elif name == "adafuse":
            auto = profile.fusion_location == AUTO
            fusion = auto_fusion(encoder) if auto else load_fusion(profile.fusion_location)
            if not isinstance(fusion, ADaFuSE):
                raise ValueError(
                    f"profile {profile.name!r} has no ADaFuSE checkpoint for encoder "
                    f"{encoder.identity!r} (its fusion is {profile.fusion!r}): name a "
                    "checkpoint folder in --methods, set --set fusion=FOLDER, or train one "
                    "with `itir train-fusion`")
            methods[name] = fusion
        else:
            methods[name] = load_fusion(name)
        if methods[name] != "image":
            # As the engine does: image-domain adapters leave the fusion's space as it was.
            methods[name].check_encoder(embedding_space(encoder), encoder.dim)
    return methods


def run(profile, dialogs_file: str | Path, methods: list[str], corpus_file=None,
        images_root=None, limit: int | None = None, k: int = 1,
        controls: tuple[str, ...] = (), also_k: tuple[int, ...] = (),
        ceiling: bool = False) -> dict:
    """Rank every dialog's target at every round under each method (and control), with g
    the mean of k pseudo-images per round; `also_k`: the same with the first k' of them
    (drawn once, as many as the largest asks), in `result["by_k"]`; `ceiling`: the best
    static text/image mix per dialog and round, in hindsight, in `result["ceiling"]`."""
    from engine.factory import load_models
    from evaluation.dialog_set import embed_dialog_set, read_dialog_set

    ds = read_dialog_set(dialogs_file, corpus_file, images_root, limit)  # bad files: at once
    controls = tuple(check_control(c) for c in controls)
    drawing = any(needs_image(m) for m in methods)
    for asked, what in ((controls, "--control changes the pseudo-images"),
                        (ceiling, "--ceiling mixes text and pseudo-image"),
                        (also_k, "--k compares numbers of pseudo-images")):
        if asked and not drawing:  # said before any model loads
            raise ValueError(f"{what}, but none of the methods draws one: add image, dar, "
                             "add or adafuse")
    if controls and len(ds.dialogs) < 2:
        raise ValueError("controls swap pseudo-images between dialogs: give at least two")
    models = load_models(profile, with_generator=drawing)
    resolved = resolve_methods(methods, profile, models.encoder)
    if drawing and models.generator is None:
        raise ValueError(f"profile {profile.name!r} has no generator, so only `text` can run")
    emb = embed_dialog_set(ds, models.encoder, models.generator if drawing else None,
                           k=max((k, *also_k)), seed=profile.generator.seed)
    result = {"dialog_file": str(dialogs_file), "encoder": models.encoder.identity,
              # how its text side ran: "onnx int8" embeds queries a little differently
              "text_runtime": getattr(models.encoder, "runtime", "torch"),
              **compare(emb, resolved, k, intervals=True)}
    if also_k:
        result["by_k"] = {str(j): compare(emb, resolved, j)["methods"]
                          for j in sorted({k, *also_k})}
    if drawing:
        result["generator"] = models.generator.identity
        result["drawing"] = {"steps": models.generator.steps,
                             "guidance": models.generator.guidance,
                             "seed": profile.generator.seed}
        if ceiling:
            from fusion import TextOnly

            text_ranks, _ = method_ranks(emb, TextOnly())
            result["ceiling"] = {**summarise(hindsight_mix_ranks(emb, k), text_ranks),
                                 "weights": list(MIX_WEIGHTS)}
            if "shuffled" in controls:  # what picking in hindsight gains from noise alone
                shuffled = hindsight_mix_ranks(emb, k, image=controlled_images(emb, "shuffled", k))
                result["ceiling"]["shuffled"] = summarise(shuffled, text_ranks)
        result["controls"] = {c: compare(emb, resolved, k, controlled_images(emb, c, k))
                              ["methods"] for c in controls}
    return result

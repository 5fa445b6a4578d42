"""The `itir` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from itir.errors import run_explained

# The world's image domains (world/domains.py), spelled out so `itir --help` stays fast.
DOMAIN_NAMES = ("flat", "outline", "textured", "noisy", "sketch", "pixelated", "halftone",
                "blurred")


def _profile(args: argparse.Namespace, check_encoder: bool = False,
             check_generator: bool = False):
    """The profile named by --profile, --set and --index. A command that is going to load
    the encoder or the generator asks for its hub model to be checked here, before it
    imports the model libraries (engine/preflight.py)."""
    from engine.preflight import check_models_reachable
    from engine.profile import load_profile

    profile = load_profile(args.profile, args.set).with_overrides(
        index=getattr(args, "index", None))
    check_models_reachable(profile, check_encoder, check_generator)
    return profile


def cmd_train_encoder(args: argparse.Namespace) -> int:
    from engine.paths import cache_dir
    from engine.profile import load_profile
    from retrieval.train_encoder import reproduce

    torch_threads(args.threads)
    onnx_folder = load_profile("world").onnx_graphs  # where the app keeps its graphs
    metrics = reproduce(args.out, args.scenes, args.steps, args.cache or cache_dir(),
                        resume=args.resume, init=args.init, part=args.part, lr=args.lr,
                        text_layers=args.text_layers, negatives=args.negatives,
                        texts_per_scene=args.texts_per_scene, onnx_folder=onnx_folder)
    print("val (full caption, text->image):", metrics)
    return 0


def cmd_train_generator(args: argparse.Namespace) -> int:
    from engine.paths import cache_dir
    from generation.train_world import reproduce

    torch_threads(args.threads)
    log = reproduce(args.out, args.scenes, args.steps, args.cache or cache_dir(),
                    resume=args.resume, layout_steps=args.layout_steps)
    print("final loss:", log[-1]["loss"])
    return 0


def cmd_distill_generator(args: argparse.Namespace) -> int:
    from engine.paths import cache_dir
    from engine.profile import Profile
    from generation.distill_guidance import reproduce

    torch_threads(args.threads)
    log = reproduce(Profile.resolve(args.teacher), args.out, args.scenes, args.steps,
                    args.cache or cache_dir(), batch_size=args.batch_size, resume=args.resume,
                    guidance=args.guidance, teacher_name=args.teacher)
    print("final loss:", log[-1]["loss"], "pixel gap:", log[-1].get("pixel_gap"))
    return 0


def cmd_tune_layout(args: argparse.Namespace) -> int:
    from engine.paths import cache_dir
    from engine.profile import Profile
    from generation.tune_layout import reproduce

    torch_threads(args.threads)
    log = reproduce(Profile.resolve(args.source), args.out, args.scenes, args.steps,
                    args.cache or cache_dir(), lr=args.lr, anchor=args.anchor,
                    resume=args.resume, source_name=args.source)
    print("final loss:", log[-1]["loss"], "slot gap:", log[-1].get("slot_gap"))
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from diffusers import UNet2DConditionModel

    from engine.profile import Profile
    from generation.onnx_unet import export_unet

    pipeline = Path(Profile.resolve(args.folder))
    index = pipeline / "model_index.json"
    kind = json.loads(index.read_text()).get("_class_name") if index.is_file() else None
    if kind != "WorldGeneratorPipeline":
        raise FileNotFoundError(f"no world generator in {pipeline} (expected the folder "
                                "`itir train-generator` writes, e.g. assets/world-generator)")
    folder = pipeline / "unet"
    torch_threads(args.threads)
    print(f"exporting {folder} to ONNX (about a minute on two cores)", file=sys.stderr)
    path = export_unet(UNet2DConditionModel.from_pretrained(folder), folder)
    print(path)
    return 0


def cmd_train_fusion(args: argparse.Namespace) -> int:
    from engine.paths import home
    from evaluation.train_fusion import reproduce

    torch_threads(args.threads)
    profile = _profile(args)
    out = args.out or home() / "fusions" / f"{profile.name}-adafuse"
    best = reproduce(out, profile, args.dialogs, args.val_dialogs, args.steps,
                     args.limit, args.val_limit, lr=args.lr, text_hinge=args.text_hinge,
                     hinge_over=args.hinge_over, resume=args.resume, images_root=args.images,
                     corpus=args.corpus, val_corpus=args.val_corpus,
                     val_images_root=args.val_images)
    print(f"wrote {out}", file=sys.stderr)
    if "step" in best:
        print(f"kept step {best['step']}: mean validation Hits@10 {best['score']:.2f}%")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from evaluation import chatir

    torch_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for control in args.control:
        chatir.check_control(control)  # a typo fails now, not after hours of drawing
    ks = args.k
    result = chatir.run(_profile(args), args.dialogs, methods, args.corpus, args.images,
                        args.limit, ks[0], tuple(args.control), tuple(ks[1:]), args.ceiling)
    print(chatir.markdown_table(result))
    if "ceiling" in result:
        print("\nceiling: the best static text/image mix per dialog and round, in hindsight:")
        rows = {"ceiling": result["ceiling"], "ceiling, shuffled pictures":
                result["ceiling"].get("shuffled")}
        print(chatir.markdown_table({"methods": {
            name: {k: v for k, v in m.items() if k != "degradation"}  # 0 by construction
            for name, m in rows.items() if m}}))
    for reference in ("text", "dar"):
        print(chatir.difference_lines(result, reference))
    for k, rows in result.get("by_k", {}).items():
        print(f"\n{k} pseudo-image(s) per round:")
        print(chatir.markdown_table({"methods": rows}))
    for control, rows in result.get("controls", {}).items():
        print(f"\ncontrol {control}:")
        print(chatir.markdown_table({"methods": rows}))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        print(f"wrote {chatir.plot(result, args.plot)}", file=sys.stderr)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from evaluation import chatir, simulate

    torch_threads(args.threads)
    variants = []
    for name in args.variants.split(","):
        strategy, _, extra = (part.strip() for part in name.partition("+"))
        if strategy not in ("information", "random") or extra not in ("", "feedback"):
            raise ValueError(f"unknown variant {name!r}: information, random, or either "
                             "+feedback")
        variants.append((strategy, extra == "feedback"))
    result = simulate.run(_profile(args), args.sessions, args.gallery, variants, args.rounds,
                          first=args.first)
    table = {"methods": result["variants"]}
    print(chatir.markdown_table(table))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.plot:
        title = f"{args.sessions} simulated sessions, gallery of {args.gallery}"
        print(f"wrote {chatir.plot(table, args.plot, title)}", file=sys.stderr)
    return 0


def _session_paths(paths: list[str]) -> list[str]:
    from engine.paths import home

    paths = paths or [str(home() / "sessions")]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"no session records at {missing[0]} (the app records to "
                                "ITIR_HOME/sessions; give record files or folders)")
    return paths


def cmd_replay(args: argparse.Namespace) -> int:
    from evaluation import chatir, replay

    torch_threads(args.threads)
    sessions = replay.sessions_of(_session_paths(args.paths))
    result = replay.summary(sessions, args.rounds)
    print(f"{result['sessions']} sessions, {result['found']} found; found by round "
          f"(0..{args.rounds}): {result['found_by_round']}")
    if args.methods and result["found"]:
        from engine.factory import build_engine

        engine = build_engine(_profile(args))

        def counterfactual() -> dict:  # torch belongs to the engine's model thread
            methods = chatir.resolve_methods([m.strip() for m in args.methods.split(",")
                                              if m.strip()], engine.profile, engine.encoder)
            methods = {k: v for k, v in methods.items() if v != "image"}
            return replay.counterfactual(sessions, engine, methods, args.rounds)
        result["counterfactual"] = engine.model_thread.run(counterfactual)
        if result["counterfactual"]:
            print(chatir.markdown_table(result["counterfactual"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.plot and result.get("counterfactual"):
        curves = {**result["counterfactual"]["methods"], "found (as recorded)": {
            f"hits@{k}": result["found_by_round"] for k in (1, 10)}}
        print(f"wrote {chatir.plot({'methods': curves}, args.plot, 'recorded sessions')}",
              file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from evaluation import replay

    sessions = replay.sessions_of(_session_paths(args.paths))
    written, left = replay.export_chatir(sessions, args.out, args.rounds)
    print(f"wrote {written} dialogs to {args.out}" + (
        f" ({left} found sessions had fewer than {args.rounds + 1} turns; lower --rounds "
        "to include them)" if left else ""))
    return 0


def cmd_world_build(args: argparse.Namespace) -> int:
    from world.build import build_split

    out = build_split(args.n, args.split, args.out, size=args.size, first=args.first,
                      wrong_answers=args.wrong_answers, preamble=args.preamble)
    print(f"wrote {args.split} scenes {args.first}..{args.first + args.n - 1} to {out} "
          "(scenes.jsonl, dialogs.json, corpus.json)")
    return 0


def cmd_world_domain(args: argparse.Namespace) -> int:
    from world.domains import write_domain

    out = write_domain(args.domain, args.split, args.n, args.out, first=args.first)
    print(f"wrote {args.n} {args.domain} {args.split} scenes to {out} (images/, captions.json)")
    return 0


def cmd_domain(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from engine import domains
    from engine.factory import load_models
    from retrieval.domain_store import check_name

    torch_threads(args.threads)
    profile = _profile(args)
    if args.action == "add":  # what can be checked before minutes of loading and reading
        check_name(args.name)
        domains.check_inputs(args.images, args.captions)
    try:
        encoder = load_models(profile, with_generator=False).encoder
    except ValueError as e:
        if args.action != "remove" or "image domain" not in str(e):
            raise
        # A broken domain must still be removable: load the encoder without domains.
        empty = replace(profile.domains_spec, folder=str(profile.domains_spec.folder) + ".none")
        encoder = load_models(replace(profile, domains=empty), with_generator=False).encoder
    if args.action == "add":
        report = domains.add_domain(profile, encoder, args.name, args.images, args.captions,
                                    steps=args.steps)
        print(report.summary())
    elif args.action == "remove":
        report = domains.remove_domain(profile, encoder, args.name)
        print(f"removed domain {args.name}" + (
            f"; re-embedded {report.reembedded} of {report.index_size} index images"
            if report.index_size else ""))
    else:
        rows = domains.list_domains(profile, encoder)
        print(f"domains of profile {profile.name} in {profile.domains_spec.folder}:")
        for r in rows:
            held = r.get("held_out")
            print(f"  {r['domain']:<16} images {r.get('images') or '-':>6}  adapter params "
                  f"{r.get('adapter_parameters', 0):>7}"
                  + (f"  held-out ({held['images']} images) R@1 {held['base']['R@1']} -> "
                     f"{held['routed']['R@1']}, routed here {held['routed_here']}%"
                     if held else "")
                  + (f"  index routed here {r['index_share']}%" if "index_share" in r else ""))
        if len(rows) == 1:
            print("  (no added domains: `itir domain add NAME --images DIR --captions FILE`)")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    profile = _profile(args, check_encoder=True)
    from engine.factory import load_models
    from retrieval.index import VectorIndex
    from retrieval.ingest import index_folder

    path = profile.index_path
    if profile.world_gallery and args.index is None:
        raise ValueError(
            f"profile {profile.name!r} searches the rendered world gallery; give your images "
            f"an index of their own: `itir index {args.folder} --index photos.itirx`, then "
            "`itir serve --index photos.itirx` (or use a profile whose [gallery] folder is "
            "your folder)")
    if path.exists() and not args.rebuild:
        # Say which index grows: under the default profile it is the world gallery's.
        known = len(VectorIndex.read_meta(path).paths)
        what = (f"profile {profile.name!r}'s index" if args.index is None else "the index")
        print(f"adding {args.folder} to {what} at {path} ({known} images so far); for a "
              "separate index give --index NEW.itirx (and `itir serve --index NEW.itirx`), "
              "or --rebuild to start this one over", file=sys.stderr)
    models = load_models(profile, with_generator=False)
    _, report = index_folder(Path(args.folder), models.encoder, path, rebuild=args.rebuild,
                             batch_size=args.batch_size, index_kind=profile.gallery.index_kind,
                             hnsw_above=profile.gallery.hnsw_above)
    for skipped, reason in report.skipped:
        print(f"skipped {skipped}: {reason}", file=sys.stderr)
    print(f"{report.summary()} -> {path}")
    if report.total == 0:
        raise ValueError(f"no readable images under {args.folder}: the index is empty")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from dialog import check_message
    from engine.preflight import check_models_reachable, draws_pseudo_images
    from retrieval.gallery import load_image

    if not args.text and not args.image:
        raise ValueError("give a text to search for, or --image FILE to search by example")
    texts = [check_message(t) for t in args.text]
    images = [(path, load_image(path)) for path in args.image]  # fail before models load
    # A terminal shows no pseudo-image: draw one only when the fusion searches with it.
    profile = _profile(args).with_overrides(show_pseudo_image=False)
    with_generator = not args.text_only and bool(texts)
    check_models_reachable(profile, True, with_generator and draws_pseudo_images(profile))
    from engine.factory import build_engine

    engine = build_engine(profile, with_generator=with_generator)
    results = []
    for text in texts:
        result = engine.search(text, round_=args.round, k=args.k)
        results.append((text, result.hits))
        if result.notice:
            print(result.notice, file=sys.stderr)
        timings = ", ".join(f"{k} {v:.1f} ms" for k, v in result.timings_ms.items())
        print(f"{text!r}: {result.fusion} {result.decision}; {timings}", file=sys.stderr)
    results += [(path, engine.search_image(image, k=args.k)) for path, image in images]
    if args.json:
        print(json.dumps([{"query": query, "hits": [
            {"rank": h.rank + 1, "path": h.path, "score": round(h.score, 6)} for h in hits]}
            for query, hits in results], indent=2))
        return 0
    for query, hits in results:
        if len(results) > 1:
            print(f"# {query}")
        for hit in hits:
            print(f"{hit.rank + 1:3d}  {hit.score:.4f}  {hit.path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    profile = _profile(args, check_generator=True)
    from engine.factory import load_models

    generator = load_models(profile, with_encoder=False).generator
    if generator is None:
        raise ValueError(f"profile {args.profile!r} has no generator")
    images = generator.generate(args.prompts, seed=args.seed, n=args.n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        path = out / f"{i // args.n:03d}-seed{args.seed + i % args.n}.png"
        image.save(path)
        print(path)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from itir.serve import launch

    # Host and port only when given: otherwise Gradio's GRADIO_SERVER_NAME/PORT (or its
    # defaults, 127.0.0.1:7860) apply, as in containers and Spaces.
    given = {"server_name": args.host, "server_port": args.port}
    launch(_profile(args), share=args.share, **{k: v for k, v in given.items() if v})
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from engine.factory import build_engine, load_models
    from evaluation import bench, plots

    torch_threads(args.threads)
    if args.what == "coldstart":
        result = bench.bench_coldstart(args.profile)
    elif args.what == "concurrency":
        if not args.url:
            raise ValueError("bench concurrency measures a running app: start `itir serve` "
                             "and give its address with --url http://127.0.0.1:7860/")
        result = bench.bench_concurrency(args.url, args.sessions, pictures=args.pictures)
    elif args.what == "resume":
        result = bench.bench_resume(args.n or 20000, args.threads)
    elif args.what == "continual":
        from evaluation.continual import bench_continual

        out = args.out or ("runs/continual-quick" if args.quick else "runs/continual")
        result = bench_continual(out, quick=args.quick, test_first=args.first)
    elif args.what == "turn":
        result = bench.bench_turns(build_engine(_profile(args)))
    elif args.what == "fusion":
        from engine.engine import embedding_space
        from engine.factory import auto_fusion
        from fusion import load_fusion

        profile = _profile(args)
        encoder = load_models(profile, with_generator=False).encoder
        fusion = (auto_fusion(encoder, profile.fusion_fallback) if profile.fusion == "auto"
                  else load_fusion(profile.fusion_location))
        fusion.check_encoder(embedding_space(encoder), encoder.dim)
        result = bench.bench_fusion(fusion, encoder)
    else:
        models = load_models(_profile(args), with_generator=args.what == "generator")
        if args.what == "encoder":
            result = bench.bench_encoder(models.encoder, args.n or 5000)
        elif args.what == "index":
            result = bench.bench_index(models.encoder, args.n or 10000)
        else:
            from evaluation.fidelity import bench_dialog_fidelity, bench_wording

            grid = bench.DOCS / "generator-samples.png"
            result = bench.bench_generator(models.encoder, models.generator, args.n or 5000,
                                           args.captions, grid_path=grid)
            result["dialogs"] = bench_dialog_fidelity(
                models.encoder, models.generator, args.dialogs, args.n or 5000,
                grid_path=bench.DOCS / "generator-dialog-samples.png")
            gallery = args.n or 5000
            result["wording"] = bench_wording(models.encoder, models.generator,
                                              min(args.wordings, gallery), gallery)
    name = args.what
    if args.what == "index" and args.n not in (None, 10000):  # keep the 10k result
        name = f"index-{args.n}"
    elif args.what == "concurrency" and args.pictures:
        name = "concurrency-pictures"
    elif args.what == "continual" and args.quick:
        name = "continual-quick"
    elif args.what == "continual" and args.first:
        name = f"continual-from{args.first}"
    path = bench.write_result(name, result)
    if args.what == "continual":
        from evaluation.continual import markdown

        print(plots.continual(result, bench.DOCS / f"{name}.png"), file=sys.stderr)
        print(markdown(result), file=sys.stderr)
    if args.what == "encoder":
        print(plots.encoder_recall(result, bench.DOCS / "encoder-recall.png"), file=sys.stderr)
    if args.what == "generator":
        print(plots.generator_fidelity(result, bench.DOCS / "generator-fidelity.png"),
              file=sys.stderr)
        print(plots.generator_rounds(result["dialogs"], bench.DOCS / "generator-rounds.png"),
              file=sys.stderr)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


def torch_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_ints(text: str) -> list[int]:
    """`1,2,4` -> [1, 2, 4], in the order given."""
    try:
        return [positive_int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers like 1,2,4, got {text!r}"
                                         ) from None


def non_negative_float(text: str) -> float:
    value = _number(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="itir", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def with_profile(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--profile", default="world",
                            help="a shipped profile's name (world, clip-sdturbo) or a TOML path")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a profile field, e.g. generator.steps=2 (repeatable)")
        parser.add_argument("--index", default=None, help="index file (default: the profile's)")
        return parser

    w = sub.add_parser("world", help="the synthetic world").add_subparsers(dest="what",
                                                                          required=True)
    wb = w.add_parser("build", help="render scenes with ground truth, captions and dialogs")
    wb.add_argument("--n", type=positive_int, required=True)
    wb.add_argument("--split", choices=["train", "val", "test"], default="test")
    wb.add_argument("--first", type=non_negative_int, default=0,
                    help="index of the first scene in the split (any range of seeds)")
    wb.add_argument("--out", required=True)
    wb.add_argument("--size", type=positive_int, default=128)
    wb.add_argument("--wrong-answers", type=float, default=0.0, metavar="FRACTION",
                    help="answer falsely this often (a robustness control), e.g. 0.2")
    wb.add_argument("--preamble", default="", metavar="TEXT",
                    help="start every dialog's first message with TEXT (a control for "
                         "dialogs past the text encoder's window)")
    wb.set_defaults(func=cmd_world_build)
    wd = w.add_parser("domain", help="render scenes of one image domain with captions "
                                     "(the input of `itir domain add`)")
    wd.add_argument("domain", choices=DOMAIN_NAMES)
    wd.add_argument("--n", type=positive_int, required=True)
    wd.add_argument("--split", choices=["train", "val", "test"], default="train")
    wd.add_argument("--first", type=non_negative_int, default=0)
    wd.add_argument("--out", required=True)
    wd.set_defaults(func=cmd_world_domain)

    do = sub.add_parser("domain", help="image domains: adapters that let new kinds of "
                                       "images join without forgetting").add_subparsers(
        dest="action", required=True)
    da = with_profile(do.add_parser("add", help="train an adapter for a new kind of image"))
    da.add_argument("name")
    da.add_argument("--images", required=True, help="folder of the new domain's images")
    da.add_argument("--captions", required=True,
                    help="JSON {file: caption or [captions]} or JSON lines "
                         "{\"image\": file, \"caption\": text}")
    da.add_argument("--steps", type=positive_int, default=None,
                    help="training steps (default: the profile's [domains] steps)")
    da.add_argument("--threads", type=positive_int, default=None)
    da.set_defaults(func=cmd_domain)
    dl = with_profile(do.add_parser("list", help="the domains, their sizes and routing"))
    dl.add_argument("--threads", type=positive_int, default=None)
    dl.set_defaults(func=cmd_domain)
    dr = with_profile(do.add_parser("remove", help="remove a domain's adapter"))
    dr.add_argument("name")
    dr.add_argument("--threads", type=positive_int, default=None)
    dr.set_defaults(func=cmd_domain)

    ix = with_profile(sub.add_parser("index", help="index (or add to the index) a folder"))
    ix.add_argument("folder")
    ix.add_argument("--rebuild", action="store_true", help="start a new index")
    ix.add_argument("--batch-size", type=positive_int, default=64)
    ix.set_defaults(func=cmd_index)

    se = with_profile(sub.add_parser("search", help="print the best matches for texts or images"))
    se.add_argument("text", nargs="*", help="one or more texts, each its own search")
    se.add_argument("--image", action="append", default=[], metavar="FILE",
                    help="search by example: the images nearest to FILE (repeatable)")
    se.add_argument("--json", action="store_true",
                    help='print [{"query", "hits": [{"rank", "path", "score"}]}], rank 1 = best')
    se.add_argument("--k", type=positive_int, default=10)
    se.add_argument("--round", type=non_negative_int, default=0,
                    help="dialog round, 0 = first message (DAR's weights depend on it)")
    se.add_argument("--text-only", action="store_true", help="skip the pseudo-image")
    se.set_defaults(func=cmd_search)

    ge = with_profile(sub.add_parser("generate", help="draw pseudo-images for prompts"))
    ge.add_argument("prompts", nargs="+")
    ge.add_argument("--seed", type=non_negative_int, default=0)
    ge.add_argument("--n", type=positive_int, default=1)
    ge.add_argument("--out", default="generated")
    ge.set_defaults(func=cmd_generate)

    be = with_profile(sub.add_parser("bench", help="measure; results go to docs/bench/"))
    be.add_argument("what", choices=["encoder", "index", "generator", "turn", "fusion",
                                     "coldstart", "resume", "concurrency", "continual"])
    be.add_argument("--out", default=None,
                    help="continual: run folder for data and models (resumable)")
    be.add_argument("--quick", action="store_true",
                    help="continual: a small run (minutes) that checks the pipeline")
    be.add_argument("--first", type=non_negative_int, default=0,
                    help="continual: test on scenes from this index on (other, unseen seeds)")
    be.add_argument("--url", default=None, help="concurrency: the running app's address")
    be.add_argument("--sessions", type=positive_int, default=8, help="concurrency: at once")
    be.add_argument("--pictures", action="store_true",
                    help="concurrency: each turn also asks for its pseudo-image, as a browser "
                         "does (docs/bench/concurrency-pictures.json)")
    be.add_argument("--n", type=positive_int, default=None, help="gallery size")
    be.add_argument("--captions", type=positive_int, default=1000,
                    help="generator: captions to draw")
    be.add_argument("--dialogs", type=positive_int, default=300,
                    help="generator: test dialogs to draw at rounds 0, 2, 5 and 10")
    be.add_argument("--wordings", type=positive_int, default=500,
                    help="generator: test scenes to describe in each wording (caption, "
                         "training and held-out free descriptions)")
    be.add_argument("--threads", type=positive_int, default=None)
    be.set_defaults(func=cmd_bench)

    sv = with_profile(sub.add_parser("serve", help="launch the chat app"))
    sv.add_argument("--host", default=None, help="default: $GRADIO_SERVER_NAME or 127.0.0.1")
    sv.add_argument("--port", type=positive_int, default=None,
                    help="default: $GRADIO_SERVER_PORT or 7860")
    sv.add_argument("--share", action="store_true")
    sv.set_defaults(func=cmd_serve)

    t = sub.add_parser("train-encoder", help="train the world dual encoder")
    t.add_argument("--scenes", type=positive_int, default=20000)
    t.add_argument("--steps", type=positive_int, default=1500)
    t.add_argument("--out", default="assets/world-encoder")
    t.add_argument("--cache", default=None, help="corpus cache folder")
    t.add_argument("--init", default=None, metavar="FOLDER",
                   help="start from this saved encoder and train only one --part of it")
    t.add_argument("--part", choices=("text", "image"), default="text",
                   help="with --init: the text head (every gallery's image embeddings stay as "
                        "they are) or the image tower (every query embedding stays)")
    t.add_argument("--lr", type=positive_float, default=None,
                   help="peak learning rate (default: EncoderTrainConfig's)")
    t.add_argument("--text-layers", type=non_negative_int, default=0, metavar="K",
                   help="the text head trains its own copy of the text tower's top K layers "
                        "(started from the tower's weights; a head that owns fewer keeps its "
                        "trained copies on top and takes fresh ones below; one that owns more "
                        "is refused)")
    t.add_argument("--negatives", choices=("batch", "corpus"), default="batch",
                   help="with --init and --part text: rank each text against the batch's "
                        "images or against every training image (retrieval/train_encoder.py)")
    t.add_argument("--texts-per-scene", type=positive_int, default=None, metavar="K",
                   help="with --part image: each scene's full caption and K-1 of its other "
                        "texts (K in 1..7, default 3), embedded once by the frozen text side "
                        "as the app on a CPU embeds queries")
    t.add_argument("--threads", type=positive_int, default=2)
    t.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out (after a stop or crash)")
    t.set_defaults(func=cmd_train_encoder)

    g = sub.add_parser("train-generator", help="train the world pseudo-image generator")
    g.add_argument("--scenes", type=positive_int, default=12000)
    g.add_argument("--steps", type=positive_int, default=4000, help="UNet steps")
    g.add_argument("--layout-steps", type=positive_int, default=3000,
                   help="layout parser steps (stage 1)")
    g.add_argument("--out", default="assets/world-generator")
    g.add_argument("--cache", default=None, help="corpus cache folder")
    g.add_argument("--threads", type=positive_int, default=2)
    g.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out (after a stop or crash)")
    g.set_defaults(func=cmd_train_generator)

    d = sub.add_parser("distill-generator", help="distil a world generator's guidance into "
                       "its UNet (one UNet pass per step instead of two)")
    d.add_argument("teacher", nargs="?", default="assets/world-generator",
                   help="the guided pipeline folder (default: the shipped one)")
    d.add_argument("--out", default="assets/world-generator-distilled")
    d.add_argument("--scenes", type=positive_int, default=12000)
    # The shipped student's recipe (2.3 min on an H200; at batch 16 a CPU does ~22 steps a
    # minute on two threads, so batch 64 would take hours there).
    d.add_argument("--steps", type=positive_int, default=1400)
    d.add_argument("--batch-size", type=positive_int, default=64)
    d.add_argument("--guidance", type=float, default=3.0, help="the scale built into the UNet")
    d.add_argument("--cache", default=None, help="corpus cache folder")
    d.add_argument("--threads", type=positive_int, default=2)
    d.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out (after a stop or crash)")
    d.set_defaults(func=cmd_distill_generator)

    y = sub.add_parser("tune-layout", help="fine-tune a world generator's layout parser on "
                       "varied wording; the UNet is kept (generation/tune_layout.py)")
    y.add_argument("source", help="a world generator pipeline folder, e.g. an older "
                   "assets/world-generator-distilled")
    y.add_argument("--out", required=True, help="where the tuned pipeline folder goes")
    y.add_argument("--scenes", type=positive_int, default=12000)
    y.add_argument("--steps", type=positive_int, default=1500)
    y.add_argument("--lr", type=float, default=3e-4)
    y.add_argument("--anchor", type=float, default=10.0,
                   help="weight of the slot-state MSE to the source parser on template texts")
    y.add_argument("--cache", default=None, help="corpus cache folder")
    y.add_argument("--threads", type=positive_int, default=2)
    y.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out (after a stop or crash)")
    y.set_defaults(func=cmd_tune_layout)

    x = sub.add_parser("export-onnx", help="export a world generator's UNet for ONNX Runtime "
                       "(generator.runtime; about twice as fast on a CPU)")
    x.add_argument("folder", nargs="?", default="assets/world-generator",
                   help="a world generator pipeline folder (default: the shipped one)")
    x.add_argument("--threads", type=positive_int, default=2)
    x.set_defaults(func=cmd_export_onnx)

    f = with_profile(sub.add_parser("train-fusion", help="train ADaFuSE on dialog files"))
    f.add_argument("--dialogs", required=True, help="training dialogs (ChatIR JSON)")
    f.add_argument("--val-dialogs", required=True, help="validation dialogs (ChatIR JSON)")
    f.add_argument("--images", default=None, metavar="ROOT", help="image paths of both files "
                   "resolve against ROOT (default: each dialog file's folder)")
    f.add_argument("--val-images", default=None, metavar="ROOT", help="the validation file's "
                   "image paths resolve against ROOT instead (default: --images)")
    f.add_argument("--corpus", default=None, help="train corpus JSON (default: corpus.json "
                   "beside the dialogs, else their targets)")
    f.add_argument("--val-corpus", default=None, help="validation corpus JSON (e.g. ChatIR's "
                   "Search_Space_val_50k.json)")
    f.add_argument("--limit", type=positive_int, default=None, help="first N train dialogs")
    f.add_argument("--val-limit", type=positive_int, default=None)
    f.add_argument("--steps", type=positive_int, default=4000)
    f.add_argument("--lr", type=float, default=5e-5)
    f.add_argument("--text-hinge", type=non_negative_float, default=None, metavar="W",
                   help="weight of the loss where fusing in the pseudo-image raises an "
                   "example's InfoNCE above the text query's (default: TEXT_HINGE in "
                   "fusion/train_adafuse.py; 0: DESIGN.md's plain InfoNCE)")
    f.add_argument("--hinge-over", choices=("corpus", "batch"), default="corpus",
                   help="rank the hinge's targets among the whole training corpus (default; "
                   "what a large gallery asks) or among the batch's other targets")
    f.add_argument("--out", default=None, help="checkpoint folder (default: ITIR_HOME/"
                   "fusions/<profile>-adafuse, where fusion = auto finds it)")
    f.add_argument("--threads", type=positive_int, default=2)
    f.add_argument("--resume", action="store_true", help="continue the run in --out")
    f.set_defaults(func=cmd_train_fusion)

    ev = with_profile(sub.add_parser(
        "eval", help="compare fusions on a dialog file (ChatIR protocol)"))
    ev.add_argument("--dialogs", required=True, help="ChatIR dialog JSON")
    ev.add_argument("--corpus", default=None, help="corpus JSON (default: corpus.json beside "
                    "the dialogs, else their targets)")
    ev.add_argument("--images", default=None, metavar="ROOT",
                    help="image paths resolve against ROOT (default: the dialog file's folder)")
    ev.add_argument("--methods", default="text,image,dar,add",
                    help="comma-separated: text, image, dar, add, adafuse, or checkpoint folders")
    ev.add_argument("--limit", type=positive_int, default=None, help="first N dialogs")
    ev.add_argument("--k", type=positive_ints, default=[1], metavar="K[,K...]",
                    help="pseudo-images per round, their embeddings' mean fused (default 1); "
                         "several, e.g. 1,2,4: each compared on the same drawings")
    ev.add_argument("--control", action="append", default=[],
                    help="also run under a control: shuffled, unrelated:0.3 (repeatable)")
    ev.add_argument("--ceiling", action="store_true",
                    help="also rank by the best static text/image mix per dialog and round, "
                         "picked in hindsight: how far fusion could go on these pseudo-images")
    ev.add_argument("--json", default=None, metavar="OUT")
    ev.add_argument("--plot", default=None, metavar="PNG")
    ev.add_argument("--threads", type=positive_int, default=2)
    ev.set_defaults(func=cmd_eval)

    si = with_profile(sub.add_parser(
        "simulate", help="simulated users: questioner, feedback and fusion end to end"))
    si.add_argument("--sessions", type=positive_int, default=1000)
    si.add_argument("--gallery", type=positive_int, default=10000,
                    help="world test scenes in the gallery (targets: --sessions of them)")
    si.add_argument("--first", type=non_negative_int, default=0,
                    help="the first target's index among the test scenes")
    si.add_argument("--rounds", type=positive_int, default=10)
    si.add_argument("--variants", default="random,information,information+feedback")
    si.add_argument("--json", default=None, metavar="OUT")
    si.add_argument("--plot", default=None, metavar="PNG")
    si.add_argument("--threads", type=positive_int, default=2)
    si.set_defaults(func=cmd_simulate)

    rp = with_profile(sub.add_parser("replay", help="success curves of recorded sessions"))
    rp.add_argument("paths", nargs="*", help="record files or folders (default: "
                    "ITIR_HOME/sessions)")
    rp.add_argument("--rounds", type=positive_int, default=10)
    rp.add_argument("--methods", default="text,dar,add",
                    help="fusions to replay found sessions under ('' for none)")
    rp.add_argument("--json", default=None, metavar="OUT")
    rp.add_argument("--plot", default=None, metavar="PNG")
    rp.add_argument("--threads", type=positive_int, default=2)
    rp.set_defaults(func=cmd_replay)

    ex = sub.add_parser("export", help="found sessions as a ChatIR dialog file")
    ex.add_argument("paths", nargs="*", help="record files or folders")
    ex.add_argument("--out", required=True)
    ex.add_argument("--rounds", type=non_negative_int, default=10)
    ex.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_explained(lambda: args.func(args), prog=f"itir {args.command}")


if __name__ == "__main__":
    sys.exit(main())

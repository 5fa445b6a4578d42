"""The `itir` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys

from itir.paths import cache_dir


def cmd_train_encoder(args: argparse.Namespace) -> int:
    from retrieval.train_encoder import reproduce

    torch_threads(args.threads)
    metrics = reproduce(args.out, args.scenes, args.steps, args.cache or cache_dir())
    print("val (full caption, text->image):", metrics)
    return 0


def cmd_train_generator(args: argparse.Namespace) -> int:
    from generation.train_world import reproduce

    torch_threads(args.threads)
    log = reproduce(args.out, args.scenes, args.steps, args.cache or cache_dir())
    print("final loss:", log[-1]["loss"])
    return 0


def cmd_world_build(args: argparse.Namespace) -> int:
    from world.build import build_split

    out = build_split(args.n, args.split, args.out, size=args.size)
    print(f"wrote {args.n} {args.split} scenes to {out} (scenes.jsonl, dialogs.json, corpus.json)")
    return 0


def _profile(args: argparse.Namespace):
    from itir.profile import load_profile

    return load_profile(args.profile).with_overrides(index=getattr(args, "index", None))


def cmd_index(args: argparse.Namespace) -> int:
    from retrieval.factory import load_encoder
    from retrieval.ingest import index_folder

    profile = _profile(args)
    encoder = load_encoder(profile)
    _, report = index_folder(args.folder, encoder, profile.index_path, rebuild=args.rebuild,
                             batch_size=args.batch_size)
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"{report.summary()} -> {profile.index_path}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from retrieval.engine import Engine, check_message

    text = check_message(args.text)
    engine = Engine.from_profile(_profile(args), with_generator=not args.text_only)
    result = engine.search(text, round_=args.round, k=args.k)
    for hit in result.hits:
        print(f"{hit.rank + 1:3d}  {hit.score:.4f}  {hit.path}")
    if result.notice:
        print(result.notice, file=sys.stderr)
    timings = ", ".join(f"{k} {v:.1f} ms" for k, v in result.timings_ms.items())
    print(f"({timings})", file=sys.stderr)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from generation.factory import load_generator

    generator = load_generator(_profile(args))
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
    from app import launch

    launch(args.profile, server_name=args.host, server_port=args.port, share=args.share)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from evaluation import bench

    torch_threads(args.threads)
    if args.what == "coldstart":
        result = bench.bench_coldstart(args.profile)
    elif args.what == "turn":
        from retrieval.engine import Engine

        result = bench.bench_turns(Engine.from_profile(_profile(args)))
    else:
        from retrieval.factory import load_encoder

        profile = _profile(args)
        encoder = load_encoder(profile)
        if args.what == "encoder":
            result = bench.bench_encoder(encoder, args.n or 5000)
        elif args.what == "index":
            result = bench.bench_index(encoder, args.n or 10000)
        else:
            from generation.factory import load_generator

            generator = load_generator(profile, getattr(encoder, "text_tower", None))
            grid = bench.REPO / "docs" / "generator-samples.png"
            result = bench.bench_generator(encoder, generator, args.n or 5000,
                                           args.captions, grid_path=grid)
    path = bench.write_result(args.what, result)
    from evaluation import plots

    docs = bench.REPO / "docs"
    if args.what == "encoder":
        print(plots.encoder_recall(result, docs / "encoder-recall.png"), file=sys.stderr)
    if args.what == "generator":
        print(plots.generator_fidelity(result, docs / "generator-fidelity.png"), file=sys.stderr)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


def torch_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="itir", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def with_profile(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--profile", default="world",
                            help="profile name (profiles/NAME.toml) or path to a TOML file")
        parser.add_argument("--index", default=None, help="index file (default: the profile's)")
        return parser

    w = sub.add_parser("world", help="the synthetic world").add_subparsers(dest="what",
                                                                          required=True)
    wb = w.add_parser("build", help="render scenes with ground truth, captions and dialogs")
    wb.add_argument("--n", type=int, required=True)
    wb.add_argument("--split", choices=["train", "val", "test"], default="test")
    wb.add_argument("--out", required=True)
    wb.add_argument("--size", type=int, default=128)
    wb.set_defaults(func=cmd_world_build)

    ix = with_profile(sub.add_parser("index", help="index (or add to the index) a folder"))
    ix.add_argument("folder")
    ix.add_argument("--rebuild", action="store_true", help="start a new index")
    ix.add_argument("--batch-size", type=int, default=64)
    ix.set_defaults(func=cmd_index)

    se = with_profile(sub.add_parser("search", help="print the best matches for a text"))
    se.add_argument("text")
    se.add_argument("--k", type=int, default=10)
    se.add_argument("--round", type=int, default=0, help="dialog round (sets DAR weights)")
    se.add_argument("--text-only", action="store_true", help="skip the pseudo-image")
    se.set_defaults(func=cmd_search)

    ge = with_profile(sub.add_parser("generate", help="draw pseudo-images for prompts"))
    ge.add_argument("prompts", nargs="+")
    ge.add_argument("--seed", type=int, default=0)
    ge.add_argument("--n", type=int, default=1)
    ge.add_argument("--out", default="generated")
    ge.set_defaults(func=cmd_generate)

    be = with_profile(sub.add_parser("bench", help="measure; results go to docs/bench/"))
    be.add_argument("what", choices=["encoder", "index", "generator", "turn", "coldstart"])
    be.add_argument("--n", type=int, default=None, help="gallery size")
    be.add_argument("--captions", type=int, default=1000, help="generator: captions to draw")
    be.add_argument("--threads", type=int, default=None)
    be.set_defaults(func=cmd_bench)

    sv = sub.add_parser("serve", help="launch the chat app")
    sv.add_argument("--profile", default="world")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=7860)
    sv.add_argument("--share", action="store_true")
    sv.set_defaults(func=cmd_serve)

    t = sub.add_parser("train-encoder", help="train the world dual encoder")
    t.add_argument("--scenes", type=int, default=20000)
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--out", default="assets/world-encoder.safetensors")
    t.add_argument("--cache", default=None, help="corpus cache folder")
    t.add_argument("--threads", type=int, default=2)
    t.set_defaults(func=cmd_train_encoder)

    g = sub.add_parser("train-generator", help="train the world pseudo-image generator")
    g.add_argument("--scenes", type=int, default=20000)
    g.add_argument("--steps", type=int, default=2000)
    g.add_argument("--out", default="assets/world-generator")
    g.add_argument("--cache", default=None, help="corpus cache folder")
    g.add_argument("--threads", type=int, default=2)
    g.set_defaults(func=cmd_train_generator)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, OSError) as e:
        # Expected failures (bad input, missing files, wrong index) get one clear line.
        print(f"itir {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

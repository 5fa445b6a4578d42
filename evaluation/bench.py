"""Benchmarks behind `itir bench ...`: encoder quality, index speed, generator fidelity and
speed, app cold start. Each returns a JSON-able dict and writes it under docs/bench/."""

from __future__ import annotations

import json
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from evaluation.metrics import percentiles_ms, recall_at, target_ranks
from world.captions import full_caption
from world.dialogs import make_dialog
from world.phrasings import PARTS, describe
from world.render import STYLES, render
from world.scene import sample_scene, split_seed

REPO = Path(__file__).resolve().parent.parent  # benchmarks write into the source tree's docs/
DOCS = REPO / "docs"


def machine() -> dict:
    return {"cpu": cpu_model(), "simd": torch.backends.cpu.get_cpu_capability(),
            "cpu_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}


def cpu_model() -> str:
    """The processor's name: hosts with the same core count differ a lot (the world generator's
    six steps took ~210 ms on one 2-core host and ~520 ms on another, AVX2 only)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_result(name: str, result: dict, out_dir: str | Path | None = None) -> Path:
    out_dir = Path(out_dir or DOCS / "bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({**result, "machine": machine()}, indent=2))
    return path


def test_scenes(n: int) -> list:
    return [sample_scene(split_seed("test", i)) for i in range(n)]


def embed_gallery(encoder, scenes: list, batch: int = 256) -> np.ndarray:
    out = []
    for i in tqdm(range(0, len(scenes), batch), desc="embed gallery", unit="batch"):
        out.append(encoder.encode_images([render(s, 64) for s in scenes[i:i + batch]]))
    return np.concatenate(out)


def bench_encoder(encoder, n: int = 5000) -> dict:
    """Text->image recall on `n` unseen test scenes: full captions and round-0 captions."""
    scenes = test_scenes(n)
    gallery = embed_gallery(encoder, scenes)
    targets = np.arange(n)
    texts = {"full caption": [full_caption(s) for s in scenes],
             "round-0 caption": [make_dialog(s)[0] for s in scenes],
             # Free wording (world/phrasings.py): forms the encoder trained on, and forms
             # held out of training (other frames, orders and synonyms).
             "free description": [describe(s, random.Random(s.seed)) for s in scenes],
             "held-out phrasing": [describe(s, random.Random(s.seed), "heldout")
                                   for s in scenes],
             # What each kind of unseen choice costs alone (the rest in training forms).
             **{f"held-out {part} only": [describe(s, random.Random(s.seed), "heldout",
                                                   parts=(part,)) for s in scenes]
                for part in PARTS}}
    styles = np.array([s.style for s in scenes])
    result = {"scenes": n, "encoder": encoder.identity}
    for name, batch in texts.items():
        q = np.concatenate([encoder.encode_texts(batch[i:i + 256])
                            for i in tqdm(range(0, n, 256), desc=name, unit="batch")])
        ranks = target_ranks(q @ gallery.T, targets)
        result[name] = {"all": recall_at(ranks),
                        **{st: recall_at(ranks[styles == st]) for st in STYLES}}
    return result


def bench_index(encoder, n: int = 10000, queries: int = 200, k: int = 10) -> dict:
    """Build an index over `n` rendered PNGs (decode + embed + add), then time searches."""
    from retrieval.index import VectorIndex
    from retrieval.ingest import index_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gallery"
        folder.mkdir()
        scenes = test_scenes(n)
        for i, s in enumerate(tqdm(scenes, desc="render gallery", unit="img")):
            render(s).save(folder / f"{i:06d}.png")
        start = time.perf_counter()
        # Exact flat first, whatever the size ("auto" would make a large gallery HNSW): it
        # is the baseline the approximate index is judged against.
        index, report = index_folder(folder, encoder, Path(tmp) / "g.itirx", batch_size=128,
                                     index_kind="flat")
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        VectorIndex.load(Path(tmp) / "g.itirx", encoder=encoder.image_identity)
        load_s = time.perf_counter() - start
    rng = random.Random(0)
    texts = [full_caption(scenes[rng.randrange(n)]) for _ in range(queries)]
    vecs = encoder.encode_texts(texts)
    faiss_s, end_to_end_s = [], []
    for text, v in zip(texts, vecs):
        t0 = time.perf_counter()
        index.search(v[None], k)
        faiss_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        index.search(encoder.encode_texts([text]), k)
        end_to_end_s.append(time.perf_counter() - t0)
    # The same gallery as an HNSW graph (what `index_kind = "auto"` picks for large
    # galleries): its recall@k against the exact flat search, and its search time.
    t0 = time.perf_counter()
    hnsw = VectorIndex(index.meta.encoder, index.meta.dim, kind="hnsw")
    hnsw.add(index.vectors(), index.paths)
    hnsw_build_s = time.perf_counter() - t0
    _, exact = index.search(vecs, k)
    hnsw_s, overlap = [], []
    for v, truth in zip(vecs, exact):
        t0 = time.perf_counter()
        _, ids = hnsw.search(v[None], k)
        hnsw_s.append(time.perf_counter() - t0)
        overlap.append(len(set(ids[0]) & set(truth)) / k)
    flat_ms, hnsw_ms = percentiles_ms(faiss_s), percentiles_ms(hnsw_s)
    return {"images": n, "build_seconds": build_s, "images_per_second": n / build_s,
            "load_seconds": load_s, "index": "faiss IndexFlatIP", "k": k,
            "index_mb": _index_mb(index), "process_peak_rss_mb": _peak_rss_mb(),
            "faiss_search": flat_ms, "text_to_results": percentiles_ms(end_to_end_s),
            "hnsw": {"index": "faiss IndexHNSWFlat (M 32, efSearch 128)",
                     "build_seconds_from_vectors": hnsw_build_s, "index_mb": _index_mb(hnsw),
                     f"recall@{k}_vs_flat": float(np.mean(overlap)),
                     "search": hnsw_ms,
                     "p50_speedup_vs_flat": flat_ms["p50_ms"] / hnsw_ms["p50_ms"]}}


def _index_mb(index) -> float:
    """What the FAISS index holds in memory (its serialised size: vectors + graph)."""
    import faiss

    return faiss.serialize_index(index.faiss).nbytes / 2**20


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_resume(n: int = 20000, threads: int = 2, timeout: float = 1200.0) -> dict:
    """`itir index` over `n` rendered images (and 3 broken files) is SIGKILLed once its saved
    index holds half of them; a second run must add exactly the rest, embedding nothing twice."""
    import os
    import signal

    from retrieval.index import VectorIndex

    with tempfile.TemporaryDirectory() as tmp:
        folder, path = Path(tmp) / "gallery", Path(tmp) / "g.itirx"
        folder.mkdir()
        for i, s in enumerate(tqdm(test_scenes(n), desc="render gallery", unit="img")):
            render(s).save(folder / f"{i:06d}.png")
        (folder / "notes.png").write_text("not an image")
        (folder / "empty.jpg").write_bytes(b"")
        (folder / "cut.png").write_bytes((folder / "000000.png").read_bytes()[:200])
        command = [sys.executable, "-m", "itir.cli", "index", str(folder), "--index", str(path)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        start = time.perf_counter()
        first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        saved = 0
        while saved < n // 2:
            if first.poll() is not None or time.perf_counter() - start > timeout:
                raise RuntimeError("the first run ended before half the gallery was saved")
            time.sleep(0.2)
            try:
                saved = len(VectorIndex.read_meta(path).paths)
            except (FileNotFoundError, ValueError):
                saved = 0
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_s = time.perf_counter() - start
        at_kill = len(VectorIndex.read_meta(path).paths)
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        resume_s = time.perf_counter() - start
        index = VectorIndex.load(path)
    paths = index.paths
    return {"images": n, "broken_files": 3, "killed_after_seconds": killed_s,
            "indexed_at_kill": at_kill, "resume_seconds": resume_s,
            "resume_exit_code": done.returncode, "resume_report": done.stdout.strip()[-400:],
            "indexed_after_resume": len(paths), "distinct_paths": len(set(paths)),
            "every_readable_image_once": len(paths) == len(set(paths)) == n}


def bench_generator(encoder, generator, n_gallery: int = 5000, n_captions: int = 1000,
                    batch: int = 50, grid_path: str | Path | None = None) -> dict:
    """Fidelity (does the pseudo-image find its scene?) and speed of the generator."""
    from fusion import DAR

    scenes = test_scenes(n_gallery)
    gallery = embed_gallery(encoder, scenes)
    captions = [full_caption(s) for s in scenes[:n_captions]]
    targets = np.arange(n_captions)
    t = encoder.encode_texts(captions)
    images = []
    for i in tqdm(range(0, n_captions, batch), desc="generate", unit="batch"):
        images += generator.generate(captions[i:i + batch], seed=0)
    g = encoder.encode_images(images)
    text_ranks = target_ranks(t @ gallery.T, targets)
    image_ranks = target_ranks(g @ gallery.T, targets)
    dar_ranks = target_ranks(DAR()(t, g, 2).query @ gallery.T, targets)
    text_hit, image_hit = text_ranks < 10, image_ranks < 10
    result = {
        "gallery": n_gallery, "captions": n_captions, "generator": generator.identity,
        "steps": generator.steps, "guidance": generator.guidance,
        "chance_R@10": 10 / n_gallery,
        "text_to_image": recall_at(text_ranks), "generated_image_to_image": recall_at(image_ranks),
        "dar_0.5_0.5": recall_at(dar_ranks),
        "top10_agreement": {"both": float((text_hit & image_hit).mean()),
                            "text_only": float((text_hit & ~image_hit).mean()),
                            "generated_only": float((~text_hit & image_hit).mean()),
                            "neither": float((~text_hit & ~image_hit).mean())},
    }
    # Latency: one prompt per call, each new (no cache hits), then batched throughput.
    single = []
    for i in range(40):
        t0 = time.perf_counter()
        generator.generate([captions[i]], seed=1000 + i)
        single.append(time.perf_counter() - t0)
    result["latency_one_image"] = percentiles_ms(single[5:])  # first calls warm up kernels
    t0 = time.perf_counter()
    generator.generate(captions[:64], seed=2000)
    result["batched_images_per_second"] = 64 / (time.perf_counter() - t0)
    if grid_path:
        comparison_grid(scenes[:16], captions[:16], images[:16]).save(grid_path)
        grid_path = Path(grid_path)
        inside = grid_path.is_relative_to(REPO)
        result["grid"] = str(grid_path.relative_to(REPO) if inside else grid_path)
    return result


def comparison_grid(scenes, captions, generated):
    """Two rows of 8 pairs: real scene (left) and pseudo-image of its caption (right)."""
    from PIL import Image, ImageDraw

    tile = 96
    grid = Image.new("RGB", (8 * 2 * tile + 7 * 8, 2 * (tile + 14)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (scene, image) in enumerate(zip(scenes, generated)):
        x, y = (i % 8) * (2 * tile + 8), (i // 8) * (tile + 14)
        grid.paste(render(scene, tile), (x, y))
        grid.paste(image.resize((tile, tile), Image.NEAREST), (x + tile, y))
        draw.text((x + 2, y + tile + 1), f"{i}: real | generated", fill="black")
    return grid


def bench_coldstart(profile: str = "world", timeout: float = 300.0) -> dict:
    """Seconds from `itir serve` to the first answered message, with a cached gallery."""
    from gradio_client import Client

    port = 7800 + random.Random().randrange(150)
    start = time.perf_counter()
    # `itir serve` as a user starts it (the same code as `python app.py`), from any folder.
    proc = subprocess.Popen([sys.executable, "-m", "itir.cli", "serve", "--profile", profile,
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while True:
            if time.perf_counter() - start > timeout:
                raise TimeoutError("app did not answer in time")
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                time.sleep(0.2)
        ready = time.perf_counter() - start
        client.predict("two red circles on a blue background", api_name="/send")
        first = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(10)
    return {"profile": profile, "seconds_to_ui": ready, "seconds_to_first_response": first}


def bench_turns(engine, dialogs: int = 30, rounds: int = 4) -> dict:
    """Per-turn latency of the engine on world test dialogs, split into its stages."""
    stages: dict[str, list[float]] = {}
    for scene in test_scenes(dialogs):
        session = engine.session()
        for message in make_dialog(scene)[:rounds]:
            result = session.send(message)
            for stage, ms in result.timings_ms.items():
                stages.setdefault(stage, []).append(ms / 1e3)
    gen = engine.generator
    spec = engine.profile.generator  # samples per turn; on a CPU the budget may cut steps
    drawing = None if gen is None else {"steps": gen.steps, "guidance": gen.guidance,
                                        "runtime": gen.runtime, "samples": spec.samples,
                                        "cpu_step_budget": spec.cpu_step_budget}
    return {"profile": engine.profile.name, "fusion": engine.fusion.name,
            "generator": drawing, "gallery": len(engine.index), "turns": dialogs * rounds,
            **{stage: percentiles_ms(v) for stage, v in stages.items()}}


def bench_fusion(fusion, encoder, calls: int = 500, batch: int = 8) -> dict:
    """What the fusion adds to a turn: `calls` fusions of one query (a turn's) and of `batch`
    queries (concurrent turns batched), on random unit vectors of the encoder's dimension,
    and the head's size against the frozen encoders' (issue 8's budget: 7%)."""
    rng = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, encoder.dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    timings = {}
    for n in (1, batch):
        t, g, rounds = unit(n), unit(n), np.arange(n) % 11
        for _ in range(50):  # warm caches and lazy initialisation
            fusion(t, g, rounds)
        seconds = []
        for _ in range(calls):
            start = time.perf_counter()
            fusion(t, g, rounds)
            seconds.append(time.perf_counter() - start)
        timings[f"batch_{n}"] = percentiles_ms(seconds)
    weights = getattr(fusion, "weights", {})
    params = int(sum(np.size(w) for w in weights.values()))
    return {"fusion": fusion.name, "encoder": encoder.identity, **timings,
            "fusion_parameters": params, "encoder_parameters": encoder.num_parameters,
            "fusion_share_percent": round(100 * params / encoder.num_parameters, 2)}


class _Arrival:
    """When a submitted call's result arrived, counted from when it was asked for."""

    def __init__(self, job):
        self.job, self.asked, self.after = job, time.perf_counter(), None
        self._arrived = threading.Event()
        job.add_done_callback(self._note)  # on the client's thread, the moment it lands

    def _note(self, _) -> None:
        self.after = time.perf_counter() - self.asked
        self._arrived.set()

    def picture(self):
        result = self.job.result()
        self._arrived.wait(10)  # callbacks run just after `result()` may return
        return result


def bench_concurrency(url: str, sessions: int = 8, turns: int = 4,
                      download_files: bool = False, pictures: bool = False) -> dict:
    """Turn latency seen by `gradio_client` users of a running app: one session alone, then
    `sessions` at once; and whether any session saw another's dialog. By default the client
    does not fetch the result images (gradio_client fetches them one by one, ~30 ms each,
    which would measure the client rather than the app). With `pictures`, each turn also
    asks for its pseudo-image, as the browser does when a reply lands (`/pseudo_image`,
    not waited for: the next turn goes at once), and every one must arrive."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client

    def one_session(i: int, ready: threading.Barrier | None = None) -> tuple[list[float], bool]:
        # Over plain http there is no certificate to check; gradio_client would otherwise
        # load the CA bundle for every request (~40 ms of CPU each, on the cores the app
        # shares here), and telemetry is off: the bench measures the app, not the client.
        client = Client(url, verbose=False, download_files=download_files,
                        ssl_verify=not url.startswith("http://"), analytics_enabled=False)
        client.predict(api_name="/reset")
        if ready is not None:  # opening the page (the app's config) is not a turn: all
            ready.wait()       # sessions connect first, then their turns start together
        dialog = make_dialog(sample_scene(split_seed("test", i)))
        seconds, isolated, drawings = [], True, []
        for r in range(turns):
            start = time.perf_counter()
            out = client.predict(dialog[r], api_name="/send")
            seconds.append(time.perf_counter() - start)
            isolated &= len(out[1]) == 2 * (r + 1) and dialog[0][:20] in out[4]
            if pictures:
                drawings.append(_Arrival(client.submit(api_name="/pseudo_image")))
        if not all(d.picture() for d in drawings):
            raise RuntimeError(f"session {i}: a turn's pseudo-image never came")
        return seconds, isolated, [d.after for d in drawings]

    lone = [one_session(0), one_session(1)]
    alone = lone[0][0] + lone[1][0]
    ready = threading.Barrier(sessions)
    # The client shares the app's cores when both run on one machine: say how much it took.
    wall, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(sessions) as pool:
        runs = list(pool.map(one_session, range(2, 2 + sessions), [ready] * sessions))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    together = [s for seconds, _, _ in runs for s in seconds]
    single, busy = percentiles_ms(alone), percentiles_ms(together)
    if pictures:  # the picture's wait after its reply, alone and under load
        single["picture_after_reply"] = percentiles_ms([s for _, _, ls in lone for s in ls])
        busy["picture_after_reply"] = percentiles_ms([s for _, _, ls in runs for s in ls])
    return {"url": url, "sessions": sessions, "turns": turns,
            "client_fetches_images": download_files, "client_asks_for_pictures": pictures,
            "single": single,
            "concurrent": busy, "p95_over_single_p50": round(busy["p95_ms"] / single["p50_ms"], 2),
            "isolated": all(ok for _, ok, _ in runs),
            "concurrent_phase": {"wall_s": round(wall, 2), "client_cpu_s": round(cpu, 2)}}

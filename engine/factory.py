"""The one factory: everything a profile names, loaded once and wired together.

The text tower is the only model two others share (the world encoder reads it through a
trained head, the world generator cross-attends it), so it is built here once and handed to
both. Lower layers get their own plain spec, never the whole profile.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.engine import Engine, embedding_space
from engine.model_thread import model_thread
from engine.paths import assets_dir, home
from engine.preflight import draws_pseudo_images
from engine.profile import Profile
from engine.questioner import Questioner, load_bank
from engine.recorder import Recorder
from fusion import Fusion, TextOnly, load_fusion
from fusion.factory import AUTO, find_checkpoint
from generation import factory as generation
from generation import spec as generation_spec
from generation.base import Generator
from retrieval import factory as retrieval
from retrieval import spec as retrieval_spec
from retrieval.encoders import Encoder
from retrieval.gallery import IMAGE_SUFFIXES
from retrieval.index import IndexMismatchError, VectorIndex
from retrieval.ingest import Progress, index_folder
from retrieval.onnx_graph import where_asked
from retrieval.text_tower import TextTower


@dataclass
class Models:
    encoder: Encoder | None
    generator: Generator | None
    text_tower: TextTower | None


def load_models(profile: Profile, with_encoder: bool = True,
                with_generator: bool = True) -> Models:
    """The profile's encoder and/or generator, sharing one text tower where both read it."""
    enc, gen = profile.encoder_spec, profile.generator_spec
    with_generator = with_generator and gen.kind != "none"
    device = profile.torch_device
    shared = ((with_encoder and retrieval_spec.needs_text_tower(enc))
              or (with_generator and generation_spec.needs_text_tower(gen)))
    tower = TextTower(device=device) if shared else None
    graphs = profile.onnx_graphs
    if with_generator and generation_spec.needs_text_tower(gen):
        tower_on_onnx(tower, enc.runtime, graphs)
    encoder = (retrieval.load_encoder(enc, device, tower, profile.domains_spec, graphs)
               if with_encoder else None)
    generator = (generation.load_generator(gen, device, tower, profile.torch_dtype)
                 if with_generator else None)
    return Models(encoder, generator, tower)


def tower_on_onnx(tower: TextTower, runtime: str, folder: Path) -> None:
    """The text tower's layers that the world generator reads (all of them, clause by
    clause), on ONNX Runtime where `[encoder] runtime` (the text side's) asks for it (`onnx`)
    or allows it (`auto`, on a CPU). The world encoder runs its own layers and head."""
    if runtime == "torch" or tower.device.type != "cpu":
        return
    where_asked(runtime, lambda: tower.use_onnx(folder, torch.get_num_threads(),
                                                depths=[tower.depth]), "The text tower")


def build_engine(profile: Profile, progress: Progress | None = None,
                 with_generator: bool = True) -> Engine:
    """Load models once; render the world gallery and build the index if they are missing.

    `with_generator=False` (e.g. `itir search --text-only`) searches with the text alone.
    It all happens on the model thread, which then runs the engine's model calls: torch is
    fast only while one long-lived thread runs it (engine/model_thread.py).
    """
    return model_thread().run(_build_engine, profile, progress, with_generator)


def _build_engine(profile: Profile, progress: Progress | None,
                  with_generator: bool) -> Engine:
    check_index_exists(profile)
    auto = profile.fusion_location == AUTO
    fusion: Fusion = (load_fusion(profile.fusion_location) if with_generator and not auto
                      else TextOnly())
    # No pseudo-image is needed when neither the fusion nor the person will look at it.
    models = load_models(profile,
                         with_generator=with_generator and draws_pseudo_images(profile, fusion))
    notice = None
    if auto and models.generator is not None:
        fusion = auto_fusion(models.encoder, profile.fusion_fallback)
        if fusion.name == profile.fusion_fallback:
            space = embedding_space(models.encoder)
            notice = (f"no ADaFuSE checkpoint for encoder {space}: fusing with {fusion.name}"
                      f" (train one with `itir train-fusion`)")
            print(f"itir: {notice}", file=sys.stderr)
    index = ensure_index(profile, models.encoder, progress)
    engine = Engine(profile, models.encoder, index, fusion, models.generator,
                    load_questioner(profile, models.encoder), load_recorder(profile))
    engine.notice = notice
    return engine


def load_recorder(profile: Profile) -> Recorder | None:
    spec = profile.recording
    if not spec.enabled:
        return None
    recorder = Recorder(spec.folder or home() / "sessions", spec.hub_dataset, spec.save_images)
    if recorder.notice:
        print(f"itir: {recorder.notice}", file=sys.stderr)
    return recorder


def load_questioner(profile: Profile, encoder: Encoder) -> Questioner | None:
    spec = profile.questions
    if spec.bank == "none":
        return None
    return Questioner(load_bank(spec.bank), encoder, spec.temperature, spec.strategy,
                      spec.options)


def auto_fusion(encoder: Encoder, fallback: str = "text") -> Fusion:
    """ADaFuSE where a checkpoint for this encoder ships in assets/ or was trained into
    ITIR_HOME/fusions/, else the built-in `fallback` (the profile's `fusion_fallback`)."""
    # The user's own (trained into ITIR_HOME) before the shipped one.
    found = find_checkpoint(embedding_space(encoder), [home() / "fusions", assets_dir()])
    return load_fusion(found if found is not None else fallback)


def fetch_dataset(repo_id: str, folder: Path) -> Path:
    """The image files of a Hugging Face dataset repository, downloaded once into `folder`
    (resumable; offline, a folder fetched before is used as it is)."""
    from huggingface_hub import snapshot_download

    # What `itir index` reads, in any letter case, at any depth.
    suffixes = [x for s in IMAGE_SUFFIXES for x in (s, s.upper())]
    patterns = [f"{depth}*{s}" for s in suffixes for depth in ("", "**/")]
    try:
        snapshot_download(repo_id, repo_type="dataset", local_dir=folder,
                          allow_patterns=patterns)
    except Exception as e:  # offline, no such dataset, no rights: one line says what to do
        reason = " ".join(str(e).split())[:200]
        raise FileNotFoundError(
            f"could not fetch the gallery dataset {repo_id!r}: {reason}. Offline, download it "
            f"on a connected machine (`hf download {repo_id} --repo-type dataset --local-dir "
            "DIR`) and set [gallery] folder = DIR (or `--set gallery.folder=DIR`)") from None
    return folder


def check_index_exists(profile: Profile) -> None:
    """An index named by hand that is not there is a typo or a forgotten `itir index`: say so
    (before any model loads) rather than fill it with world scenes."""
    path = profile.index_path
    if profile.world_gallery and profile.index is not None and not path.exists():
        raise FileNotFoundError(f"no index at {path}; build it with `itir index FOLDER "
                                f"--index {path}`")


def ensure_index(profile: Profile, encoder: Encoder,
                 progress: Progress | None = None) -> VectorIndex:
    """The profile's index; on first use render the world gallery and/or index the folder."""
    path, folder = profile.index_path, profile.gallery_folder
    if path.exists():
        try:
            index = VectorIndex.load(path, encoder=encoder.image_identity)
            if len(index) == 0:
                raise ValueError(f"the index at {path} is empty; add images with `itir index "
                                 f"FOLDER --index {path}`")
            return index
        except IndexMismatchError:
            if not (profile.world_gallery and profile.index is None):
                raise
            # The app's own world index is a cache of shipped weights: after an upgrade of
            # the encoder it is rebuilt rather than refused.
            print(f"itir: the world gallery index {path} was built with another encoder; "
                  "re-indexing it", file=sys.stderr)
            path.unlink()
    check_index_exists(profile)
    if profile.world_gallery:
        from world.build import DONE, build_split

        if not (folder / DONE).exists():
            n = profile.gallery.world_scenes
            build_split(n, "test", folder,
                        progress=progress and (lambda i, t: progress(i, t, "rendering gallery")))
    elif profile.gallery.dataset:
        fetch_dataset(profile.gallery.dataset, folder)
    elif not folder.is_dir():
        raise FileNotFoundError(
            f"gallery folder {folder} does not exist; create it with your images or set "
            f"[gallery] folder in the {profile.name!r} profile")
    index, report = index_folder(folder, encoder, path, progress=progress,
                                 index_kind=profile.gallery.index_kind,
                                 hnsw_above=profile.gallery.hnsw_above)
    if len(index) == 0:
        raise ValueError(f"no readable images under {folder} ({len(report.skipped)} skipped); "
                         "add .jpg/.png/.webp/.bmp files and run `itir index` again")
    return index

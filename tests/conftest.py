"""Shared fixtures: tiny random models saved to temporary folders, loaded back for real."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Session records of test runs go to a temporary folder, not the user's ITIR_HOME.
os.environ.setdefault("ITIR_RECORDING_FOLDER", __import__("tempfile").mkdtemp(prefix="itir-rec-"))
# The text side's ONNX graphs are exported once per run (~30 s), not once per ITIR_HOME.
os.environ.setdefault("ITIR_ONNX_FOLDER", __import__("tempfile").mkdtemp(prefix="itir-onnx-"))
torch.set_num_threads(2)

CHARS = "abcdefghijklmnopqrstuvwxyz"


def write_tiny_clip_tokenizer(folder) -> dict[str, int]:
    """A character-level CLIP BPE vocabulary: no merges, so every word splits into letters."""
    tokens = list(CHARS) + [c + "</w>" for c in CHARS] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return vocab


def tiny_clip_text_config(vocab: dict[str, int], **kw) -> dict:
    return dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"], **kw)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    vocab = write_tiny_clip_tokenizer(folder)
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=tiny_clip_text_config(vocab),
                     vision_config=dict(image_size=32, patch_size=8, hidden_size=32,
                                        intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2),
                     projection_dim=16)
    CLIPModel(cfg).save_pretrained(folder / "model")
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                           crop_size={"height": 32, "width": 32}),
        tokenizer=CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")))
    processor.save_pretrained(folder / "model")
    return folder / "model"


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory):
    """A random Stable Diffusion pipeline small enough to run in a test, saved to disk."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny-sd")
    vocab = write_tiny_clip_tokenizer(folder)
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=4,
                          down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16),
        text_encoder=CLIPTextModel(CLIPTextConfig(**tiny_clip_text_config(vocab))),
        tokenizer=CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                model_max_length=77),
        unet=UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
            attention_head_dim=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
        scheduler=EulerDiscreteScheduler(steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "pipeline")
    return folder / "pipeline"


def render_gallery(folder, n: int, name: str = "{i:02d}.png", size: int = 64):
    """World scenes 0..n-1 as PNGs in `folder` (made if needed); returns the folder."""
    from world.render import render
    from world.scene import sample_scene

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        render(sample_scene(i), size).save(folder / name.format(i=i))
    return folder


@pytest.fixture(scope="session")
def gallery_of():
    """`gallery_of(folder, n, name=...)`: a folder of n rendered world scenes."""
    return render_gallery


@pytest.fixture(scope="session")
def text_tower():
    from retrieval.text_tower import TextTower

    return TextTower()


@pytest.fixture(scope="session")
def onnx_folder():
    """The run's folder of text-side ONNX graphs (what the engine's tests share)."""
    return Path(os.environ["ITIR_ONNX_FOLDER"])


@pytest.fixture(scope="session")
def random_world_encoder_dir(tmp_path_factory):
    """A world encoder folder (save_pretrained) with a random (seeded) image tower and head."""
    from retrieval.world_encoder import WorldDualEncoder, WorldEncoderConfig

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("enc") / "random-encoder"
    WorldDualEncoder(WorldEncoderConfig()).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def random_world_encoder(random_world_encoder_dir, text_tower):
    from retrieval.encoders import WorldEncoder

    return WorldEncoder(random_world_encoder_dir, text_tower)


@pytest.fixture(scope="session")
def image_tuned_world_encoder(random_world_encoder_dir, text_tower, tmp_path_factory):
    """`random_world_encoder` with only its image tower changed, saved in another folder (as
    `itir train-encoder --part image --out NEW` leaves it)."""
    from retrieval.encoders import WorldEncoder
    from retrieval.world_encoder import WorldDualEncoder

    model = WorldDualEncoder.from_pretrained(random_world_encoder_dir)
    with torch.no_grad():
        model.image.proj[-1].bias.add_(0.1)
    folder = tmp_path_factory.mktemp("enc") / "image-tuned"
    model.save_pretrained(folder)
    return WorldEncoder(folder, text_tower)


@pytest.fixture(scope="session")
def shipped_encoder(text_tower):
    from engine.profile import load_profile
    from retrieval.encoders import WorldEncoder

    return WorldEncoder(load_profile("world").encoder_spec.location, text_tower=text_tower)


def pytest_collection_modifyitems(session, config, items):
    """Start the app server (for tests that use `world_app`) as soon as the tests are known,
    and run those tests last: the server boots on one core while other tests run."""
    if any("world_app" in item.fixturenames for item in items):
        config.stash[SERVER] = start_world_server(config)
        items.sort(key=lambda item: "world_app" in item.fixturenames)  # stable sort


def start_world_server(config):
    import subprocess
    import sys
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="itir-elsewhere-"))
    port = 7700 + os.getpid() % 200
    env = {**os.environ, "ITIR_HOME": str(work / "home"), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "itir.cli", "serve", "--port", str(port),
         "--set", "gallery.world_scenes=48"], cwd=work, env=env, stdout=log, stderr=log)
    config.add_cleanup(lambda: (proc.terminate(), proc.wait(20), log.close()))
    return proc, f"http://127.0.0.1:{port}/", work / "serve.log"


SERVER = pytest.StashKey()


@pytest.fixture(scope="session")
def world_app(pytestconfig):
    """The real app, started as a new user would: `itir serve` from an unrelated folder,
    world profile and shipped weights, over a 48-scene gallery. Yields (url, top_k)."""
    import time

    from gradio_client import Client

    proc, url, log = pytestconfig.stash[SERVER]
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError("itir serve exited:\n" + log.read_text())
        if time.time() > deadline:
            raise RuntimeError("itir serve did not come up:\n" + log.read_text())
        try:
            Client(url, verbose=False)
            return url, 12
        except Exception:
            time.sleep(0.3)


@pytest.fixture(scope="session")
def world_app_log(world_app, pytestconfig) -> Path:
    """The server log of `world_app` (stdout and stderr)."""
    return pytestconfig.stash[SERVER][2]


@pytest.fixture(scope="session")
def tiny_world_pipeline(tmp_path_factory, text_tower):
    """A random tiny world pipeline, and the folder it was saved to with save_pretrained."""
    from generation.world_layout import WorldLayoutParser
    from generation.world_pipeline import WorldGeneratorPipeline
    from generation.world_unet import TINY, build_unet, sampling_scheduler

    torch.manual_seed(0)
    parser = WorldLayoutParser(width=TINY.cross_attention_dim, heads=2).eval()
    pipe = WorldGeneratorPipeline(parser, build_unet(TINY), sampling_scheduler(), text_tower)
    pipe.set_progress_bar_config(disable=True)
    folder = tmp_path_factory.mktemp("world-gen") / "tiny"
    pipe.save_pretrained(folder)
    return pipe, folder


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory):
    """A random BLIP retrieval model (BERT word-piece tokenizer of letters), saved to disk."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = tmp_path_factory.mktemp("tiny-blip")
    words = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", "?", "."] + list(CHARS)
             + ["##" + c for c in CHARS])
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(words), hidden_size=32, encoder_hidden_size=32,
                         num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=300, pad_token_id=0, bos_token_id=2,
                         sep_token_id=3),
        vision_config=dict(hidden_size=32, image_size=32, patch_size=8, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64),
        image_text_hidden_size=16)
    BlipForImageTextRetrieval(cfg).save_pretrained(folder / "model")
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=BertTokenizer(str(folder / "vocab.txt"))).save_pretrained(
        folder / "model")
    return folder / "model"

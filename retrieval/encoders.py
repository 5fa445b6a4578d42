"""Encoders behind one interface: texts and images -> L2-normalised float32 [N, D].

`identity` names the weights exactly (backend, source, content hash); `image_identity`
names the image side alone, and an index (image vectors) records it, so an index built with
one image side is never searched with another, while a new text side needs no re-index.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from threading import Lock
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from retrieval.adapters import RoutedImageTower
from retrieval.device import check_reachable, gpu_decorated, missing_model, offline_kwargs
from retrieval.domain_store import DomainStore
from retrieval.onnx_graph import OnnxGraph, TokenLayers, where_asked
from retrieval.routing import Router, style_features
from retrieval.spec import DomainSpec
from retrieval.text_tower import TextTower
from retrieval.weights import tensor_digest
from retrieval.world_encoder import WorldDualEncoder

# What an int8 text side is checked on against the float graph (OnnxGraph): the kinds of
# text it reads, from a few words to a long dialog.
INT8_PROBE = [
    "a red circle",
    "two small green squares and a large striped blue triangle on a yellow background",
    "background: brown. objects: a dotted purple star at the top left, a tiny orange circle",
    "a big circle, is there a square? no, what colour is the background? white, where is "
    "the circle? in the middle, how big is the circle? large, is it striped? yes",
]


class Encoder(Protocol):
    identity: str
    image_identity: str  # the image side alone: what image embeddings depend on
    text_identity: str  # the text side alone: what text embeddings depend on
    dim: int
    num_parameters: int  # every weight used to embed, frozen text tower included
    max_tokens: int  # the text window; longer text is cut by the tokenizer

    def count_tokens(self, text: str) -> int: ...

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...

    def encode_images(self, images: list[Image.Image]) -> np.ndarray: ...


def _check_texts(texts: list[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode_texts takes a list of strings, not one string")
    return [t if isinstance(t, str) else str(t) for t in texts]


def pixels(images: list[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> uint8-range float [B,3,size,size] (RGB; alpha and palettes flattened)."""
    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.BOX)) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()


class WorldEncoder:
    """The world dual encoder: locked MiniLM text tower + trained head and image tower.

    `location` is a folder written by `WorldDualEncoder.save_pretrained` (config.json +
    model.safetensors); `text_tower` is the process's shared tower (the generator reads it too).
    """

    def __init__(self, location: str | Path, text_tower: TextTower, device: str = "cpu",
                 batch_size: int = 256, domains: DomainSpec | None = None,
                 runtime: str = "torch", onnx_folder: str | Path | None = None,
                 quantize: str = "none"):
        folder = Path(location)
        weights = folder / "model.safetensors"
        if not (weights.is_file() and (folder / "config.json").is_file()):
            raise FileNotFoundError(
                f"no world encoder at {folder} (expected config.json and model.safetensors, "
                "as written by save_pretrained); it ships in assets/world-encoder (reinstall "
                "from a clean clone) or can be rebuilt with `itir train-encoder`")
        self.model = WorldDualEncoder.from_pretrained(folder).to(device).eval()
        cfg = self.model.config
        if text_tower.width != cfg.text_width:
            raise ValueError(f"the encoder at {folder} reads {cfg.text_width}-wide states of "
                             f"{cfg.text_tower}, but the text tower gives {text_tower.width}")
        if cfg.text_layers > text_tower.depth:
            raise ValueError(f"the encoder at {folder} owns {cfg.text_layers} top layers of "
                             f"{cfg.text_tower}, but the text tower has {text_tower.depth}")
        self.text_tower = text_tower
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.dim = cfg.embed_dim
        self.image_size = cfg.image_size
        self.identity = self.base_identity = \
            f"world:{folder.name}@{tensor_digest(self.model.state_dict())}"
        # A text-head fine-tune (`itir train-encoder --init`) leaves image embeddings as they
        # were; caches of them are keyed by this, so they survive it.
        self.image_identity = self.base_image_identity = \
            f"world-image@{tensor_digest(self.model.image.state_dict())}"
        self.num_parameters = sum(p.numel() for m in (self.model, text_tower.model)
                                  for p in m.parameters())
        self.max_tokens = text_tower.max_tokens
        # An image-tower fine-tune (`--part image`) or a renamed folder leaves query
        # embeddings as they were; caches of them are keyed by this, so they survive it.
        self.text_identity = (f"world-text@{tensor_digest(self.model.text.state_dict())}"
                              f"/{cfg.text_tower}/{self.max_tokens}")
        # The runtime is not part of the identity: ONNX Runtime gives the same embeddings
        # (to ~1e-6), as a batch does. Its int8 graph does not (cosine ~0.998): queries'
        # caches are keyed apart; the index (images) and fusion checkpoints stay valid.
        self.text_path = self._text_path(runtime, Path(onnx_folder) if onnx_folder else None,
                                         quantize)
        self.runtime = "torch"
        if isinstance(self.text_path, OnnxGraph):
            self.runtime = "onnx int8" if self.text_path.int8 else "onnx"
            self.text_identity += "+int8" if self.text_path.int8 else ""
        self.routed: RoutedImageTower | None = None
        self.router: Router | None = None
        if domains is not None:
            self.use_domains(DomainStore.of(domains))

    def use_domains(self, store: DomainStore) -> None:
        """Embed images with the store's adapters, merged per image by prototype routing
        (nothing changes while the store holds no domain)."""
        if self.routed is not None:
            self.routed.detach()
        router = store.router()
        self.routed, self.router = None, None
        self.identity, self.image_identity = self.base_identity, self.base_image_identity
        if router is None or not store.names:
            return
        adapters = store.adapters(self.model.image, self.base_image_identity)
        self.routed = RoutedImageTower(self.model.image, adapters).to(self.device).eval()
        self.router = router
        # Index vectors depend on the adapters and on routing: all of it goes in the identity.
        numbers = [*router.centre, *router.spread, router.temperature, router.keep,
                   *(x for protos in router.prototypes.values() for p in protos for x in p),
                   *(a.scale for a in adapters)]
        digest = tensor_digest({**{f"{n}.{k}": v for n, a in zip(store.names, adapters)
                                   for k, v in a.state_dict().items()},
                                "routing": torch.tensor(numbers)})
        self.identity = f"{self.base_identity}+domains@{digest}"
        self.image_identity = f"{self.base_image_identity}+domains@{digest}"

    @property
    def domains(self) -> list[str]:
        """Routing targets in weight order: the base, then each added domain."""
        return self.router.names if self.router is not None else []

    def image_pixels(self, images: list[Image.Image]) -> torch.Tensor:
        # Small images (generated 32x32) go in at their size; the tower upsamples them as
        # it saw in training, rather than PIL box-resizing them up.
        small = all(max(im.size) < self.image_size for im in images)
        return pixels(images, 32 if small else self.image_size).to(self.device)

    def _route(self, x: torch.Tensor) -> torch.Tensor:
        return self.router.weights(style_features(self.model.image, x))

    @torch.no_grad()
    def style_features(self, images: list[Image.Image]) -> torch.Tensor:
        """What routing reads [N, F]: it depends on the base tower only, so it stays valid
        while domains come and go."""
        return torch.cat([style_features(self.model.image,
                                         self.image_pixels(images[i:i + self.batch_size]))
                          for i in range(0, len(images), self.batch_size)])

    def route(self, images: list[Image.Image]) -> np.ndarray:
        """Routing weights [N, len(domains)] (base first), exactly those `encode_images`
        uses; [N, 0] without domains."""
        if self.router is None:
            return np.zeros((len(images), 0), np.float32)
        return self.router.weights(self.style_features(images)).numpy()

    def count_tokens(self, text: str) -> int:
        return self.text_tower.count_tokens(text)

    def _text_path(self, runtime: str, onnx_folder: Path | None, quantize: str) -> Callable:
        """The text side after the tower's embedding layer, as one module: the tower's
        layers below those the head owns, then the head. On a CPU it runs on ONNX Runtime
        where asked (`onnx`) or where it can (`auto`), there in int8 if `quantize` says."""
        below = self.text_tower.depth - self.model.config.text_layers
        path = TokenLayers(self.text_tower.layers(below), self.model.text)
        if runtime == "onnx" and (self.device.type != "cpu" or onnx_folder is None):
            raise ValueError("encoder runtime onnx runs on the CPU, from a folder for its graph;"
                             f" got {self.device} and {onnx_folder}: set device=cpu, or "
                             "encoder.runtime=auto or torch")
        if runtime == "torch" or self.device.type != "cpu" or onnx_folder is None:
            return path
        int8 = quantize == "int8"
        probe = self.text_tower.embed(INT8_PROBE) if int8 else None
        graph = where_asked(runtime, lambda: OnnxGraph(path, self.text_tower.width, onnx_folder,
                                                       "world-text", torch.get_num_threads(),
                                                       int8, probe),
                            "The text side")
        return path if graph is None else graph

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        texts = _check_texts(texts)
        # Batches of similar length: a batch is padded to its longest text, and a dialog
        # benchmark mixes 10-token captions with 120-token dialogs: sorted, its 2,816-query
        # chunks embed in 41 s instead of 67 s (two threads).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim), np.float32)
        for i in range(0, len(texts), self.batch_size):
            ids = order[i:i + self.batch_size]
            states, mask = self.text_tower.embed([texts[j] for j in ids])
            out[ids] = F.normalize(self.text_path(states, mask), dim=-1).float().cpu().numpy()
        return out

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.encode_images_routed(images)[0]

    @torch.no_grad()
    def encode_images_routed(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings [N, D] and the routing weights they were made with [N, len(domains)]
        (base first; [N, 0] without domains), in one pass."""
        out, routes = [], []
        for i in range(0, len(images), self.batch_size):
            x = self.image_pixels(images[i:i + self.batch_size])
            if self.routed is not None:  # the base's weight is column 0; it has no adapter
                w = self._route(x)
                out.append(self.routed(x, w[:, 1:].to(self.device)).float().cpu().numpy())
                routes.append(w.numpy())
            else:
                out.append(self.model.encode_image(x).float().cpu().numpy())
                routes.append(np.zeros((len(x), 0), np.float32))
        if not out:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, 0), np.float32)
        return np.concatenate(out), np.concatenate(routes)


def _concat(chunks: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)


class TransformersEncoder:
    """What the transformers backends share: loading by hub id or folder with one clear
    message when it fails (offline, say), batching, and L2-normalised float32 output."""

    kind: str  # the backend's name in identities and messages

    def __init__(self, location: str, device: str = "cpu", batch_size: int = 64):
        try:
            check_reachable(location)  # offline: fail before importing transformers' models
            self._load(location)
        except OSError as e:
            raise OSError(missing_model(f"{self.kind.upper()} model", location,
                                        "encoder.location", str(e).splitlines()[0])) from e
        self.model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        if self.device.type == "cuda":  # on a ZeroGPU Space, a GPU is attached per call
            self.encode_texts = gpu_decorated(self.encode_texts)
            self.encode_images = gpu_decorated(self.encode_images)
        self.identity = self.image_identity = self.text_identity = f"{self.kind}:{location}"
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        self.max_tokens = getattr(self, "max_tokens", None) or min(
            self.processor.tokenizer.model_max_length, 512)
        # Turns count tokens on the server's event threads while the model thread encodes:
        # a fast tokenizer must not be used from two threads at once, so counting has its own.
        self._counter, self._counter_lock = copy.deepcopy(self.processor.tokenizer), Lock()

    def count_tokens(self, text: str) -> int:
        with self._counter_lock:
            return len(self._counter(text)["input_ids"])

    def _load(self, location: str) -> None:
        raise NotImplementedError

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def _image_features(self, images: list[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        texts = _check_texts(texts)
        return _concat([F.normalize(self._text_features(texts[i:i + self.batch_size]), dim=-1)
                        .float().cpu().numpy()
                        for i in range(0, len(texts), self.batch_size)], self.dim)

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return _concat([F.normalize(self._image_features(
            [im.convert("RGB") for im in images[i:i + self.batch_size]]), dim=-1)
            .float().cpu().numpy() for i in range(0, len(images), self.batch_size)], self.dim)


class CLIPEncoder(TransformersEncoder):
    """Any transformers CLIPModel, by hub id or local folder."""

    kind = "clip"

    def _load(self, location: str) -> None:
        from transformers import CLIPModel, CLIPProcessor

        offline = offline_kwargs(location)
        self.model = CLIPModel.from_pretrained(location, **offline)
        self.processor = CLIPProcessor.from_pretrained(location, **offline)
        self.dim = self.model.config.projection_dim

    @staticmethod
    def _features(out) -> torch.Tensor:
        # transformers 5 returns an output object here; older versions a tensor.
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        batch = self.processor(text=texts, padding=True, truncation=True,
                               return_tensors="pt").to(self.device)
        return self._features(self.model.get_text_features(**batch))

    def _image_features(self, images: list[Image.Image]) -> torch.Tensor:
        batch = self.processor(images=images, return_tensors="pt").to(self.device)
        return self._features(self.model.get_image_features(**batch))


class BLIPEncoder(TransformersEncoder):
    """BLIP retrieval (`BlipForImageTextRetrieval`): its image-text contrastive projections
    (256-d for the released models), the embeddings ChatIR, DAR and ADaFuSE search with.
    Text is cut at 256 tokens, as ADaFuSE does (ten-round dialogs run ~120-150 tokens)."""

    kind = "blip"
    max_tokens = 256

    def _load(self, location: str) -> None:
        from transformers import BlipForImageTextRetrieval, BlipProcessor

        offline = offline_kwargs(location)
        self.model = BlipForImageTextRetrieval.from_pretrained(location, **offline)
        self.processor = BlipProcessor.from_pretrained(location, **offline)
        self.dim = self.model.config.image_text_hidden_size

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        batch = self.processor(text=texts, padding=True, truncation=True,
                               max_length=self.max_tokens, return_tensors="pt").to(self.device)
        states = self.model.text_encoder(input_ids=batch["input_ids"],
                                         attention_mask=batch["attention_mask"]).last_hidden_state
        return self.model.text_proj(states[:, 0])  # the [CLS] state, as BLIP's ITC uses

    def _image_features(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        states = self.model.vision_model(pixel_values=pixels.to(self.device)).last_hidden_state
        return self.model.vision_proj(states[:, 0])

"""Profiles: which encoder, generator, fusion, gallery and device, as data in a TOML file."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from itir.paths import REPO, home

PROFILES = REPO / "profiles"


@dataclass(frozen=True)
class EncoderSpec:
    kind: str = "world"  # world | clip
    location: str = "assets/world-encoder"


@dataclass(frozen=True)
class GeneratorSpec:
    kind: str = "world"  # world | hub | none
    location: str = "assets/world-generator"
    steps: int = 8
    guidance: float = 3.0
    seed: int = 0
    size: int | None = None  # hub pipelines only; None = the model's default


@dataclass(frozen=True)
class GallerySpec:
    folder: str | None = None  # None: a rendered world test split of `world_scenes` images
    world_scenes: int = 5000


@dataclass(frozen=True)
class Profile:
    name: str = "world"
    device: str = "auto"  # auto = cuda when available, else cpu
    top_k: int = 12
    fusion: str = "text"
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    generator: GeneratorSpec = field(default_factory=GeneratorSpec)
    gallery: GallerySpec = field(default_factory=GallerySpec)
    index: str | None = None  # None: ITIR_HOME/indexes/<name>.itirx

    def resolve(self, location: str) -> str:
        """Repo-relative paths (assets/...) become absolute; hub ids pass through."""
        path = REPO / location
        return str(path) if not Path(location).is_absolute() and path.exists() else location

    @property
    def gallery_folder(self) -> Path:
        if self.gallery.folder:
            return Path(self.gallery.folder).expanduser()
        return home() / "galleries" / f"world-test-{self.gallery.world_scenes}"

    @property
    def index_path(self) -> Path:
        return Path(self.index) if self.index else home() / "indexes" / f"{self.name}.itirx"

    @property
    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def with_overrides(self, **kw) -> Profile:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def _build(cls, data: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; expected {sorted(known)}")
    return cls(**data)


def load_profile(name_or_path: str = "world") -> Profile:
    """A profile by name (profiles/<name>.toml) or by path to a TOML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES / f"{name_or_path}.toml"
    if not path.exists():
        names = sorted(p.stem for p in PROFILES.glob("*.toml"))
        raise FileNotFoundError(f"profile {name_or_path!r} not found; known: {names}")
    data = tomllib.loads(path.read_text())
    parts = {"encoder": EncoderSpec, "generator": GeneratorSpec, "gallery": GallerySpec}
    for key, cls in parts.items():
        data[key] = _build(cls, data.get(key, {}), f"{path} [{key}]")
    return _build(Profile, data, str(path))

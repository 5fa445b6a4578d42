"""Profiles: which encoder, generator, fusion, gallery and device, as data in a TOML file.

A profile composes the plain specs each lower layer defines (`EncoderSpec`,
`GeneratorSpec`) and hands each layer only its own, with shipped-asset paths resolved.
Any field can be overridden without editing the file: `--set generator.steps=2`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from engine.paths import assets_dir, home, profiles_dir
from fusion.factory import AUTO, BUILT_IN
from generation.spec import RUNTIMES, GeneratorSpec
from retrieval.device import DTYPES, resolve_dtype
from retrieval.spec import QUANTIZE, DomainSpec, EncoderSpec
from world.render import RENDER_VERSION

MAX_GATHER_MS = 1000  # a drawing waiting longer for company would cost more than it saves
ASSET_PREFIX = "assets/"  # locations under it are the shipped weights, wherever installed


@dataclass(frozen=True)
class GallerySpec:
    folder: str | None = None  # None: a rendered world test split of `world_scenes` images
    dataset: str | None = None  # a Hugging Face dataset of images, fetched to ITIR_HOME/datasets
    world_scenes: int = 5000
    index_kind: str = "auto"  # flat (exact) | hnsw (approximate, fast) | auto: by size
    hnsw_above: int = 50_000  # auto: flat below this many images, HNSW from it on


@dataclass(frozen=True)
class QuestionSpec:
    bank: str = "world"  # profiles/questions/<bank>.toml, or a TOML path; "none": never ask
    strategy: str = "information"  # information (splits the results) | random (baseline)
    temperature: float = 0.05  # softmax temperature of answer-vs-result similarities
    options: int = 3  # answer buttons offered (likeliest first), besides typing
    top_k: int = 12  # results the question is chosen to split


@dataclass(frozen=True)
class FeedbackSpec:
    # Rocchio: q' = alpha*q + beta*mean(liked) - gamma*mean(rejected), renormalised; each
    # mean weighs a mark made `a` rounds before the newest of its kind by decay**a (1: every
    # mark alike). Older marks were made on vaguer results: simulated users find targets
    # sooner when the newest lead (docs/BENCHMARKS.md, "The interactive loop").
    alpha: float = 1.0
    beta: float = 0.6
    gamma: float = 0.3
    decay: float = 0.3


@dataclass(frozen=True)
class RecordingSpec:
    enabled: bool = True
    folder: str = ""  # "": ITIR_HOME/sessions
    hub_dataset: str = ""  # e.g. "me/itir-sessions": also pushed there when HF_TOKEN is set
    save_images: bool = True  # the pseudo-image of each turn, beside the records


@dataclass(frozen=True)
class Profile:
    name: str = "world"
    device: str = "auto"  # auto = cuda, then mps, else cpu
    dtype: str = "auto"  # the generator's: auto = float16 on cuda, else float32
    top_k: int = 12
    fusion: str = "text"  # a built-in fusion name, a checkpoint folder, or auto (fusion/)
    fusion_fallback: str = "dar"  # what auto uses when no checkpoint fits the encoder
    reformulation: str = "chatir"  # dialog -> query (dialog/query.py)
    show_pseudo_image: bool = True  # draw it for the person even when the fusion ignores it
    # Turns of different sessions in flight at once (each session's own events run one at a
    # time); their model calls queue on one thread, which batches them (engine/model_thread.py).
    concurrent_turns: int = 8
    # Before serving, search a made-up query alone, then `concurrent_turns` at once
    # (Engine.warm_up), so the first people after a start do not pay for the models' first
    # batches. Seconds on a CPU with the world models; a hub generator on a CPU would take
    # minutes: off there.
    warm_up: bool = False
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    generator: GeneratorSpec = field(default_factory=GeneratorSpec)
    gallery: GallerySpec = field(default_factory=GallerySpec)
    questions: QuestionSpec = field(default_factory=QuestionSpec)
    feedback: FeedbackSpec = field(default_factory=FeedbackSpec)
    recording: RecordingSpec = field(default_factory=RecordingSpec)
    index: str | None = None  # None: ITIR_HOME/indexes/<name>-<gallery>.itirx
    # ONNX graphs of the text side (runtime onnx/auto), exported on first use and named by
    # their weights' digest, so any number of homes may share one folder. "": ITIR_HOME/onnx
    onnx_folder: str = ""
    domains: DomainSpec = field(default_factory=DomainSpec)

    def __post_init__(self):
        if self.top_k < 1:
            raise ValueError(f"profile {self.name!r}: top_k must be at least 1, got {self.top_k}")
        if self.concurrent_turns < 1 or self.generator.batch_size < 1:
            raise ValueError(f"profile {self.name!r}: concurrent_turns and [generator] "
                             f"batch_size must be at least 1, got {self.concurrent_turns} and "
                             f"{self.generator.batch_size}")
        if self.generator.runtime not in RUNTIMES:
            raise ValueError(f"profile {self.name!r}: [generator] runtime must be one of "
                             f"{', '.join(RUNTIMES)}, got {self.generator.runtime!r}")
        if self.encoder.runtime not in RUNTIMES:
            raise ValueError(f"profile {self.name!r}: [encoder] runtime must be one of "
                             f"{', '.join(RUNTIMES)}, got {self.encoder.runtime!r}")
        if self.encoder.quantize not in QUANTIZE:
            raise ValueError(f"profile {self.name!r}: [encoder] quantize must be one of "
                             f"{', '.join(QUANTIZE)}, got {self.encoder.quantize!r}")
        if self.encoder.runtime == "onnx" and self.encoder.kind != "world":
            raise ValueError(f"profile {self.name!r}: [encoder] runtime onnx is for the world "
                             f"encoder; a {self.encoder.kind} encoder runs on torch")
        if self.generator.runtime == "onnx" and self.generator.kind != "world":
            raise ValueError(f"profile {self.name!r}: [generator] runtime onnx is for the "
                             f"world generator; a {self.generator.kind} generator runs on torch")
        if self.generator.samples < 1 or self.generator.fewest_steps < 1:
            raise ValueError(f"profile {self.name!r}: [generator] samples and fewest_steps must "
                             f"be at least 1, got {self.generator.samples} and "
                             f"{self.generator.fewest_steps}")
        if not 0 <= self.generator.gather_ms <= MAX_GATHER_MS:  # also refuses nan
            raise ValueError(f"profile {self.name!r}: [generator] gather_ms must be from 0 to "
                             f"{MAX_GATHER_MS}, got {self.generator.gather_ms}")
        if self.encoder.quantize != "none" and self.encoder.kind != "world":
            raise ValueError(f"profile {self.name!r}: [encoder] quantize is for the world "
                             f"encoder's text side; a {self.encoder.kind} encoder runs as "
                             "it is (quantize = \"none\")")
        if self.generator.cpu_step_budget < 0:
            raise ValueError(f"profile {self.name!r}: [generator] cpu_step_budget must be 0 "
                             f"(off) or more, got {self.generator.cpu_step_budget}")
        spec = self.generator
        if spec.cpu_step_budget and spec.samples * spec.fewest_steps > spec.cpu_step_budget:
            # A lone turn's own samples would be under the cutoff: it would never draw.
            raise ValueError(f"profile {self.name!r}: [generator] cpu_step_budget "
                             f"({spec.cpu_step_budget}) must cover samples x fewest_steps "
                             f"({spec.samples} x {spec.fewest_steps}), or a turn alone would "
                             "search without its pseudo-image")
        if not 0 < self.feedback.decay <= 1:  # also refuses nan
            raise ValueError(f"profile {self.name!r}: [feedback] decay must be in (0, 1], got "
                             f"{self.feedback.decay}")
        if self.fusion_fallback not in BUILT_IN:
            raise ValueError(f"profile {self.name!r}: fusion_fallback must be one of "
                             f"{sorted(BUILT_IN)}, got {self.fusion_fallback!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"profile {self.name!r}: dtype must be one of "
                             f"{', '.join(DTYPES)}, got {self.dtype!r}")
        if self.gallery.index_kind not in ("auto", "flat", "hnsw"):
            raise ValueError(f"profile {self.name!r}: [gallery] index_kind must be auto, flat "
                             f"or hnsw, got {self.gallery.index_kind!r}")
        if self.gallery.folder and self.gallery.dataset:
            raise ValueError(f"profile {self.name!r}: [gallery] takes a folder or a dataset, "
                             "not both")
        d = self.domains
        if not (d.temperature > 0 and 0 <= d.keep < 1 and d.rank >= 1 and d.steps >= 1
                and d.batch_size >= 1):
            raise ValueError(f"profile {self.name!r}: [domains] needs temperature > 0, "
                             f"0 <= keep < 1 and rank, steps, batch_size >= 1; got {d}")
        if self.world_gallery and self.gallery.world_scenes < 1:
            raise ValueError(f"profile {self.name!r}: [gallery] world_scenes must be at least "
                             f"1, got {self.gallery.world_scenes}")

    @staticmethod
    def resolve(location: str) -> str:
        """`assets/...` -> the shipped folder; other paths expand `~`; hub ids pass through."""
        if location.startswith(ASSET_PREFIX):
            return str(assets_dir() / location.removeprefix(ASSET_PREFIX))
        path = Path(location).expanduser()
        return str(path.resolve()) if path.exists() else location

    @property
    def encoder_spec(self) -> EncoderSpec:
        return replace(self.encoder, location=self.resolve(self.encoder.location))

    @property
    def generator_spec(self) -> GeneratorSpec:
        return replace(self.generator, location=self.resolve(self.generator.location))

    @property
    def fusion_location(self) -> str:
        # A built-in name stays a name, whatever folders the current directory holds.
        return (self.fusion if self.fusion in BUILT_IN or self.fusion == AUTO
                else self.resolve(self.fusion))

    @property
    def gallery_folder(self) -> Path:
        if self.gallery.dataset:
            return home() / "datasets" / self.gallery.dataset.replace("/", "--")
        if self.gallery.folder:
            return Path(self.gallery.folder).expanduser().resolve()
        # The renderer's version in the name: a renderer fix renders a fresh gallery.
        return home() / "galleries" / f"world-test-{self.gallery.world_scenes}-r{RENDER_VERSION}"

    @property
    def world_gallery(self) -> bool:
        """The gallery is the app's own rendered world split (rebuildable at any time)."""
        return self.gallery.folder is None and self.gallery.dataset is None

    @property
    def index_path(self) -> Path:
        """The explicit `index`, else one file per (profile, gallery): pointing a profile at
        another gallery never reuses the index of the first."""
        if self.index:
            return Path(self.index).expanduser().resolve()
        if self.world_gallery:
            gallery = f"world{self.gallery.world_scenes}-r{RENDER_VERSION}"
        else:
            folder = self.gallery_folder
            gallery = f"{folder.name}-{hashlib.sha1(str(folder).encode()).hexdigest()[:8]}"
        return home() / "indexes" / f"{self.name}-{gallery}.itirx"

    @property
    def domains_spec(self) -> DomainSpec:
        folder = self.domains.folder
        return replace(self.domains, folder=str(Path(folder).expanduser().resolve()) if folder
                       else str(home() / "domains" / self.name))

    @property
    def onnx_graphs(self) -> Path:
        """Where text-side ONNX graphs are kept (`onnx_folder`, or ITIR_HOME/onnx)."""
        return Path(self.onnx_folder).expanduser() if self.onnx_folder else home() / "onnx"

    @property
    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"

    @property
    def torch_dtype(self) -> str:
        """The generator's dtype on this profile's device (retrieval.device.resolve_dtype)."""
        return resolve_dtype(self.dtype, self.torch_device)

    def with_overrides(self, **kw) -> Profile:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def override(self, assignment: str) -> Profile:
        """Apply one `key=value` or `section.key=value` (the value read as TOML, else text)."""
        key, sep, raw = assignment.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE (e.g. generator.steps=2), got {assignment!r}")
        value = _parse_value(raw.strip())
        section, _, name = key.strip().rpartition(".")
        if not section:
            return _set_field(self, name, value, "profile")
        if section not in SECTIONS:
            raise ValueError(f"--set {key}: unknown section {section!r}; expected one of "
                             f"{', '.join(SECTIONS)}")
        part = _set_field(getattr(self, section), name, value, f"[{section}]")
        return replace(self, **{section: part})

    def describe(self) -> str:
        gen = self.generator
        generator = "none" if gen.kind == "none" else (
            f"{gen.kind} {gen.location} ({gen.steps} steps, guidance {gen.guidance}"
            + (f", runtime {gen.runtime})" if gen.kind == "world" else ")"))
        return (f"profile {self.name}: encoder {self.encoder.kind} {self.encoder.location} · "
                f"generator {generator} · fusion {self.fusion} · device {self.torch_device} "
                f"({self.torch_dtype})")


SECTIONS = {"encoder": EncoderSpec, "generator": GeneratorSpec, "gallery": GallerySpec,
            "questions": QuestionSpec, "feedback": FeedbackSpec,
            "recording": RecordingSpec, "domains": DomainSpec}  # the TOML tables


def _parse_value(raw: str):
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word: text


def _set_field(obj, name: str, value, where: str):
    known = {f.name: getattr(obj, f.name) for f in fields(obj)}
    if name not in known:
        raise ValueError(f"{where}: unknown key {name!r}; expected one of {sorted(known)}")
    current = known[name]
    if current is not None and not isinstance(value, type(current)) and not (
            isinstance(current, float) and isinstance(value, int)):
        raise ValueError(f"{where} {name} takes a {type(current).__name__}, got {value!r}")
    return replace(obj, **{name: value})


def _build(cls, data: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; expected {sorted(known)}")
    return cls(**data)


def env_overrides(environ: dict[str, str] | None = None) -> list[str]:
    """`ITIR_<FIELD>` and `ITIR_<SECTION>_<FIELD>` variables as `--set` assignments, e.g.
    ITIR_GENERATOR_STEPS=2 or ITIR_TOP_K=5 (a Space sets them as variables). Variables that
    name no profile field (ITIR_HOME, ITIR_PROFILE) are not overrides."""
    environ = os.environ if environ is None else environ
    top = {f.name for f in fields(Profile)} - set(SECTIONS)
    out = []
    for key, value in sorted(environ.items()):
        if not key.startswith("ITIR_"):
            continue
        name = key.removeprefix("ITIR_").lower()
        section, _, rest = name.partition("_")
        if section in SECTIONS and rest in {f.name for f in fields(SECTIONS[section])}:
            out.append(f"{section}.{rest}={_as_toml(value)}")
        elif name in top:
            out.append(f"{name}={_as_toml(value)}")
    return out


def _as_toml(value: str) -> str:
    """Environment values are text; numbers and booleans stay themselves, words get quotes."""
    return value if _parse_value(value) != value else json.dumps(value)


def load_profile(name_or_path: str = "world", overrides: list[str] | tuple[str, ...] = (),
                 ) -> Profile:
    """A profile by name (a shipped profiles/<name>.toml) or by path to a TOML file, then
    the environment's ITIR_* overrides, then `overrides` (`--set`), later ones winning."""
    path = Path(name_or_path).expanduser()
    if not path.suffix:
        path = profiles_dir() / f"{name_or_path}.toml"
    if not path.is_file():
        names = sorted(p.stem for p in profiles_dir().glob("*.toml"))
        raise FileNotFoundError(f"profile {name_or_path!r} not found; known: {names} "
                                "(or give the path of a .toml file)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML: {e}") from e
    for key, cls in SECTIONS.items():
        data[key] = _build(cls, data.get(key, {}), f"{path} [{key}]")
    profile = _build(Profile, data, str(path))
    for assignment in [*env_overrides(), *overrides]:
        profile = profile.override(assignment)
    return profile

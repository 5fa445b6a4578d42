"""Device helpers shared by the encoders and the generators."""

from __future__ import annotations

import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

DTYPES = ("auto", "float32", "float16", "bfloat16")


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto`: float16 on CUDA (half the memory, twice the speed), float32 elsewhere (CPU
    kernels want it, and MPS half precision is not reliable for every diffusers model). A
    half precision asked for on the CPU is refused rather than silently run slowly."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    if dtype != "float32" and device == "cpu":
        raise ValueError(f"dtype {dtype} needs a GPU (device cuda or mps); on the CPU use "
                         "float32 or auto")
    return dtype


def gpu_decorated(fn):
    """On a Hugging Face ZeroGPU Space, `spaces.GPU` attaches a GPU per call; elsewhere the
    `spaces` package is absent and the function runs as it is."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers, asked once per process in at most `timeout` s.

    Offline, transformers and diffusers retry the hub with back-off for half a minute before
    saying a model is missing; asking first lets a hub id load from the local cache
    (`local_files_only`) or fail with its message at once."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https"
                                                             else 80)), timeout).close()
        return True
    except OSError:
        return False


def offline_kwargs(location: str) -> dict:
    """`from_pretrained` keywords for `location`: a local folder loads as it is; a hub id
    loads from the local cache only when the hub cannot be reached."""
    if Path(location).expanduser().exists():
        return {}
    return {} if hub_reachable() else {"local_files_only": True}


def looks_like_path(location: str) -> bool:
    """A folder rather than a hub id ("owner/name")."""
    return (location.startswith((".", "/", "~")) or Path(location).expanduser().exists()
            or location.count("/") > 1)


def missing_model(what: str, location: str, setting: str, reason: str) -> str:
    """The one message for a model that would not load: which, why, and the local-copy fix."""
    if looks_like_path(location):
        return (f"could not load {what} from {location}: {reason.rstrip('.')}. Point the "
                f"profile's {setting} at the folder the model was saved or downloaded to "
                f"(`--set {setting}=DIR`), or at its hub id.")
    return (f"could not load {what} {location!r}: {reason.rstrip('.')}. Offline, download it "
            f"on a connected machine (`hf download {location} --local-dir DIR`) and set the "
            f"profile's {setting} = DIR (or `--set {setting}=DIR`).")


def check_reachable(location: str, marker: str = "config.json") -> None:
    """Refuse, before any model library is imported, a hub id that is neither in the local
    cache nor reachable, or a folder that is not there (OSError, as `from_pretrained` would
    raise, after its retries for a hub id)."""
    if Path(location).expanduser().exists():
        return
    if looks_like_path(location):
        raise OSError("no such folder")
    if hub_reachable():
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(location, marker)
    except ValueError:  # not a valid hub id either (e.g. a Windows path)
        cached = None
    if not isinstance(cached, str):
        raise OSError(f"{location!r} is not in the local Hugging Face cache and the hub "
                      "cannot be reached.")

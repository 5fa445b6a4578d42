"""Device helpers shared by the encoders and the generators."""

from __future__ import annotations

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

"""The world UNet on ONNX Runtime: the same weights, drawn about twice as fast on a CPU.

A 32x32 UNet with 32-128 channels is a long chain of small kernels. Eager torch pays its
dispatch and layout conversions on each of them, so on a two-core AVX2 processor one denoising
step over the guidance pair took ~90-150 ms; ONNX Runtime runs the same graph, with its
operators fused and its memory planned once, in ~50 ms (docs/BENCHMARKS.md, "ONNX Runtime").
The denoising steps are nearly all of a pseudo-image's time, so this is where the per-turn
latency is won.

`export_unet` writes `unet/model.onnx` beside the safetensors, tagged with the digest of the
weights it was traced from (and the version of this module's graph interface); `OnnxUNet`
refuses a file whose tag does not match the weights the pipeline loaded, so a retrained UNet
is never drawn with a stale graph. Exporting needs `onnx` and `onnxscript` (torch's
exporter); running needs only `onnxruntime`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel

from generation.spec import GenerationError
from retrieval.onnx_graph import cpu_session, quiet_exporter, written_atomically
from retrieval.weights import tensor_digest

ONNX_FILE = "model.onnx"
TAG_KEY = "itir.unet_digest"
GRAPH_VERSION = "v1"  # bump when _Denoise's inputs or outputs change: old exports go stale


def unet_tag(unet: UNet2DConditionModel) -> str:
    """What an export of these weights is tagged with: graph version and weights digest."""
    return f"{GRAPH_VERSION}:{tensor_digest(unet.state_dict())}"


class _Denoise(torch.nn.Module):
    """The UNet's call as positional tensors in, one tensor out: what an ONNX graph takes."""

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                slots: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=slots, return_dict=False)[0]


def export_unet(unet: UNet2DConditionModel, folder: str | Path) -> Path:
    """Trace a float32 CPU `unet` into folder/model.onnx, any batch size, tagged with
    `unet_tag`. Takes ~50 s for the shipped UNet on two cores."""
    weight = next(unet.parameters())
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        raise ValueError(f"export a float32 UNet on the CPU, not {weight.dtype} on "
                         f"{weight.device}: ONNX Runtime runs it on the CPU")
    cfg = unet.config
    # Batch 2 as the example: torch.export specialises sizes 0 and 1, and the batch must not be.
    sample = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    slots = torch.randn(2, 2, cfg.cross_attention_dim)
    batch = torch.export.Dim("batch", min=1)
    path = Path(folder) / ONNX_FILE
    with written_atomically(path) as partial:
        with quiet_exporter():
            program = torch.onnx.export(
                _Denoise(unet).eval(), (sample, torch.tensor(500.0), slots), dynamo=True,
                input_names=["sample", "timestep", "slots"], output_names=["out"],
                dynamic_shapes={"sample": {0: batch}, "timestep": None,
                                "slots": {0: batch, 1: torch.export.Dim("slots", min=1)}},
                verbose=False)
        program.model.metadata_props[TAG_KEY] = unet_tag(unet)
        program.save(partial, external_data=False)  # one file: 19 MB, far from protobuf's 2 GB
    return path


class OnnxUNet:
    """`unet(sample, t, slots) -> noise prediction` through an ONNX Runtime session (CPU).

    Raises GenerationError when folder/model.onnx is missing, unreadable, or tagged with
    other weights than `tag` (see `unet_tag`)."""

    def __init__(self, folder: str | Path, tag: str, threads: int):
        path = Path(folder) / ONNX_FILE
        fix = (f"run `itir export-onnx {Path(folder).parent}`, or set "
               "generator.runtime=torch")
        if not path.is_file():
            raise GenerationError(f"{Path(folder)} has no {ONNX_FILE}; {fix}")
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise GenerationError(f"onnxruntime is not installed ({e}); `pip install "
                                  "onnxruntime`, or set generator.runtime=torch") from e
        try:
            # Between the UNet calls torch runs the layout parser and the scheduler: the
            # session's threads sleep rather than spin (see cpu_session).
            self.session = cpu_session(path, threads)
        except Exception as e:  # a truncated or foreign file: say which and what to do
            raise GenerationError(f"could not load {path} ({e}); {fix}") from e
        found = self.session.get_modelmeta().custom_metadata_map.get(TAG_KEY)
        if found != tag:
            raise GenerationError(f"{path} was exported from other weights (tag {found}, "
                                  f"weights {tag}); {fix}")

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor,
                 slots: torch.Tensor) -> torch.Tensor:
        feed = {"sample": sample.float().numpy(),
                "timestep": np.asarray(float(timestep), dtype=np.float32),
                "slots": slots.float().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])

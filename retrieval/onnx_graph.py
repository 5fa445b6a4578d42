"""Token-state modules on ONNX Runtime: the text side of a turn, about twice as fast on a CPU.

A world turn reads the dialog through MiniLM's layers twice: the encoder takes the states of
layer 4 and runs its own copies of layers 5-6 and a head; the generator reads layer 6 of
each clause it has not seen. Eager torch pays its dispatch on each of their many small
kernels: on two AVX2 cores a four-round query took 51-59 ms through tower and head, and
ONNX Runtime runs the same layers in ~23 ms (docs/BENCHMARKS.md, "ONNX Runtime").

Nothing here ships: a graph is exported on first use (~10-20 s each) into a cache folder
(ITIR_HOME/onnx), under a name that carries the digest of the weights it holds, so a
retrained head or another tower never runs a stale graph. A cache file that does not load
is exported again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from retrieval.weights import tensor_digest

GRAPH_VERSION = "v1"  # bump when TokenLayers' inputs or outputs change: old exports go stale


def cpu_session(path: str | Path, threads: int):
    """An ONNX Runtime session on the CPU with `threads` intra-op threads that sleep, not
    spin, between calls: torch's kernels run between ours on the same cores, and two thread
    pools that spin measured ~2x slower each than one."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class TokenLayers(nn.Module):
    """BERT-style layers over token states [B,L,W] with a mask [B,L], then an optional
    `head(states, mask)`: what runs after the tower's embedding layer, as one module.
    The layers get the additive mask the tower's own attention gets (padding at -inf)."""

    def __init__(self, layers: list[nn.Module], head: nn.Module | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.head = head

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bias = (1.0 - mask[:, None, None, :].to(states.dtype)) * torch.finfo(states.dtype).min
        for layer in self.layers:
            states = layer(states, bias)
        return states if self.head is None else self.head(states, mask.bool())


class OnnxGraph:
    """`module(states, mask)` run by ONNX Runtime from `folder/{name}-{digest}.onnx`,
    exported there first if missing. Raises RuntimeError when it can be neither loaded nor
    exported (the caller decides whether torch may run it instead)."""

    def __init__(self, module: nn.Module, width: int, folder: str | Path, name: str,
                 threads: int):
        module = module.eval()
        digest = tensor_digest(module.state_dict())
        self.path = Path(folder) / f"{name}-{GRAPH_VERSION}-{digest}.onnx"
        if self.path.is_file():
            try:
                self.session = cpu_session(self.path, threads)
                return
            except Exception as e:  # a truncated cache file: ours to write again
                print(f"itir: could not load {self.path} ({e}); exporting it again",
                      file=sys.stderr)
        export(module, width, self.path)
        try:
            self.session = cpu_session(self.path, threads)
        except Exception as e:
            raise RuntimeError(f"could not load {self.path} for ONNX Runtime ({e})") from e

    def __call__(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feed = {"states": states.float().numpy(), "mask": mask.to(torch.int64).numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


def export(module: nn.Module, width: int, path: Path) -> None:
    """Trace `module` over any batch and length into `path` (written beside and renamed: an
    interrupted export never leaves half a file)."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    # Batch 2 and length 5 as the example: torch.export treats sizes 0 and 1 as constants.
    states = torch.randn(2, 5, width)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    axes = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("tokens", min=1)}
    # torch's fast path for its own encoder layers is a fused kernel ONNX has no operator
    # for; the plain path computes the same.
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    # The exporter logs every operator library it skips (torchvision's) and warns about its
    # own deprecations: nothing a user can act on. Whether the graph is right, the tests say.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"itir: exporting {path.name} for ONNX Runtime (once, ~10-20 s) into "
              f"{path.parent}", file=sys.stderr)
        # torch.export's exporter: the TorchScript one (~6x faster) bakes the example's
        # length into nn.MultiheadAttention's reshapes.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (states, mask), dynamo=True, verbose=False,
                                        input_names=["states", "mask"], output_names=["out"],
                                        dynamic_shapes={"states": axes, "mask": axes})
        program.save(partial, external_data=False)
        os.replace(partial, path)
    except Exception as e:
        with contextlib.suppress(OSError):  # nothing written, or nowhere to write
            partial.unlink()
        raise RuntimeError(f"could not export {path.name} for ONNX Runtime ({e})") from e
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        exporter_log.setLevel(level)


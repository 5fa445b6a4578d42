"""Token-state modules on ONNX Runtime: the text side of a turn, about twice as fast on a CPU.

A world turn reads the dialog through MiniLM's layers twice: the encoder takes the states of
layer 2 and runs its own copies of layers 3-6 and a head; the generator reads layer 6 of
each clause it has not seen. Eager torch pays its dispatch on each of their many small
kernels: on two AVX2 cores the encoder's text stage took 37-41 ms p50 in a turn, and 20-21
ms as one ONNX Runtime graph (docs/BENCHMARKS.md, "Per-turn latency", the fifth session).

Nothing here ships: a graph is exported on first use (~20 s each, torch's exporter) into a
cache folder (ITIR_HOME/onnx), named by the digest of the weights it holds. A name cannot
cover everything that makes a graph (a config's head count, the code of a forward, library
versions), so every load also runs a small fixed input through both the graph and the torch
module: a graph that answers otherwise, or does not load, is exported again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from retrieval.weights import tensor_digest

GRAPH_VERSION = "v1"  # part of every graph's name: bump to retire all earlier exports
TOLERANCE = 1e-4  # graph vs torch on the check input; ONNX Runtime differs by ~5e-7
INT8_COSINE = 0.98  # int8 vs float graph on real inputs, each row; measured ~0.995-0.999
INT8_VERSION = "q1"  # in int8 graphs' names: bump when quantize_int8's settings change
T = TypeVar("T")
ONNX_FIX = ("set onnx_folder (ITIR_ONNX_FOLDER) to a folder itir may write, or "
            "encoder.runtime=torch")


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


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """torch's ONNX exporter without its noise (it logs every operator library it skips,
    torchvision's, and warns about its own deprecations: nothing a user can act on; whether
    a graph is right, the tests and `OnnxGraph`'s check say), with torch's fused attention
    fast path off (ONNX has no operator for it; the plain path computes the same)."""
    exporter_log = logging.getLogger("torch.onnx")
    level, fast = exporter_log.level, torch.backends.mha.get_fastpath_enabled()
    exporter_log.setLevel(logging.ERROR)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        exporter_log.setLevel(level)


@contextlib.contextmanager
def written_atomically(path: Path) -> Iterator[Path]:
    """A new temporary file beside `path`, renamed to `path` when the block ends and removed
    if it raises: an interrupted export never leaves half a graph, and two processes
    exporting into one folder never write the same file. It is made first, so a folder that
    cannot be written fails before any tracing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                       suffix=".partial")
    os.close(handle)
    try:
        yield Path(partial)
        os.replace(partial, path)
    finally:
        with contextlib.suppress(OSError):  # gone already when renamed
            os.unlink(partial)


def where_asked(runtime: str, build: Callable[[], T], what: str) -> T | None:
    """`build()` (an ONNX Runtime graph) as `runtime` says: under `onnx` its failure is a
    ValueError that says what to set; under `auto` a warning, and None: torch runs `what`."""
    try:
        return build()
    except RuntimeError as e:
        if runtime == "onnx":
            raise ValueError(f"{e}; {ONNX_FIX}") from e
        warnings.warn(f"{e}. {what} runs on torch meanwhile (about half as fast on a CPU); "
                      f"{ONNX_FIX}", stacklevel=3)
        return None


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
            out = layer(states, bias)
            states = out[0] if isinstance(out, tuple) else out  # transformers < 5.9: a tuple
        return states if self.head is None else self.head(states, mask.bool())


class OnnxGraph:
    """`module(states, mask)` run by ONNX Runtime from `folder/{name}-v1-{digest}.onnx`,
    exported there first if missing, unreadable or answering otherwise than `module`.
    Raises RuntimeError when no graph that agrees with `module` can be had (the caller
    decides whether torch may run it instead).

    With `int8`, what runs is that graph with its matrix products in int8 (`...-int8q1.onnx`,
    made from the checked float graph; `quantize_int8`). It cannot match the model to 1e-4,
    so it is checked against the float graph on `probe`, real inputs, by cosine; if it cannot
    be had, the float graph runs, with a warning, and `int8` says so."""

    def __init__(self, module: nn.Module, width: int, folder: str | Path, name: str,
                 threads: int, int8: bool = False,
                 probe: tuple[torch.Tensor, torch.Tensor] | None = None):
        module = module.eval()
        self.path = (Path(folder) /
                     f"{name}-{GRAPH_VERSION}-{tensor_digest(module.state_dict())}.onnx")
        self.int8 = int8
        if int8 and probe is None:
            raise ValueError("an int8 graph is checked on real inputs: pass `probe`")
        fresh = not self._usable(module, width, threads)
        if fresh:
            export(module, width, self.path)
            try:
                self.session = cpu_session(self.path, threads)
                self._check(module, width)
            except Exception as e:
                raise RuntimeError(f"could not use {self.path} with ONNX Runtime ({e})") from e
        if int8:
            self._use_int8(probe, threads, fresh)

    def _usable(self, module: nn.Module, width: int, threads: int) -> bool:
        """Whether the graph already in the folder loads and agrees with `module`."""
        if not self.path.is_file():
            return False
        try:
            self.session = cpu_session(self.path, threads)
            self._check(module, width)
            return True
        except Exception as e:  # a truncated file, other code or settings: ours to redo
            print(f"itir: {self.path} is not usable ({e}); exporting it again",
                  file=sys.stderr)
            return False

    def _use_int8(self, probe: tuple[torch.Tensor, torch.Tensor], threads: int,
                  fresh: bool) -> None:
        float_session, want = self.session, self(*probe)
        path = self.path.with_name(f"{self.path.stem}-int8{INT8_VERSION}.onnx")
        for attempt in range(2):  # a stale or broken int8 file is made again, once
            try:
                if fresh or attempt or not path.is_file():
                    quantize_int8(self.path, path)
                self.session = cpu_session(path, threads)
                got = self(*probe)
                cosine = F.cosine_similarity(got.flatten(1), want.flatten(1)).min().item()
                if not cosine >= INT8_COSINE:
                    raise ValueError(f"its answers are off by cosine {cosine:.3f}")
                self.path = path
                return
            except Exception as e:  # noqa: BLE001  (the second failure is reported below)
                error = e
        self.session, self.int8 = float_session, False
        warnings.warn(f"could not quantize {self.path.name} to int8 ({error}); it runs in "
                      "float32 (about half as fast)", stacklevel=3)

    def __call__(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feed = {"states": states.float().numpy(), "mask": mask.to(torch.int64).numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])

    def _check(self, module: nn.Module, width: int) -> None:
        """The graph must compute what `module` does now (lengths 3 and 6, one padded)."""
        states = torch.randn(2, 6, width, generator=torch.Generator().manual_seed(0))
        mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6], dtype=torch.bool)
        with torch.no_grad():
            want = module(states, mask)
        got = self(states, mask)
        rows = mask if want.dim() == 3 else slice(None)  # token states: real tokens only
        gap = (got[rows] - want[rows]).abs().max().item()
        if not gap <= TOLERANCE:
            raise ValueError(f"it computes something else than the model (by {gap:.2g})")


def quantize_int8(source: Path, target: Path) -> None:
    """`source` with its matrix products in int8 into `target`: weights per output channel
    (per tensor lost ~1% cosine on real dialog queries, per channel ~0.2%), activations
    scaled per call (dynamic: no calibration data to keep in step with the model)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # it advises a pre-processing pass, for convolutions
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with written_atomically(target) as partial:
            quantize_dynamic(source, partial, weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"])
    finally:
        root.setLevel(level)


def export(module: nn.Module, width: int, path: Path) -> None:
    """Trace `module` over any batch and length into `path`; RuntimeError if it cannot."""
    # Batch 2 and length 5 as the example: torch.export treats sizes 0 and 1 as constants.
    # (The TorchScript exporter, ~6x faster, bakes the example's length into
    # nn.MultiheadAttention's reshapes.)
    states = torch.randn(2, 5, width)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    axes = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("tokens", min=1)}
    try:
        with written_atomically(path) as partial:
            print(f"itir: exporting {path.name} for ONNX Runtime (once, ~20 s) into "
                  f"{path.parent}", file=sys.stderr)
            with quiet_exporter():
                program = torch.onnx.export(module, (states, mask), dynamo=True,
                                            verbose=False, input_names=["states", "mask"],
                                            output_names=["out"],
                                            dynamic_shapes={"states": axes, "mask": axes})
            program.save(partial, external_data=False)
    except Exception as e:
        raise RuntimeError(f"could not export {path.name} into {path.parent} ({e})") from e

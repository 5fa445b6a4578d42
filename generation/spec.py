"""What a profile says about its generator: plain data, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

GENERATOR_KINDS = ("world", "hub", "none")
RUNTIMES = ("auto", "torch", "onnx")


@dataclass(frozen=True)
class GeneratorSpec:
    kind: str = "world"  # world | hub | none
    location: str = "assets/world-generator"  # pipeline folder or hub id
    steps: int = 8
    guidance: float = 3.0
    seed: int = 0
    samples: int = 1  # K pseudo-images per turn (one batched call); g = their mean embedding
    batch_size: int = 8  # the most queries concurrent turns draw in one call of the model
    size: int | None = None  # hub pipelines only; None = the model's default
    # World generator only: how its UNet runs. onnx = ONNX Runtime on the CPU, from the
    # folder's unet/model.onnx (`itir export-onnx`); auto = onnx on a CPU when the folder has
    # an export of these very weights, torch otherwise.
    runtime: str = "auto"
    # On a CPU a batch of pseudo-images costs about what its images cost one by one, so
    # while the app serves n images' turns at once (concurrent turns x samples: the most in
    # flight over the last second, engine/load.py), each draws min(steps, cpu_step_budget //
    # n) steps: a busy app draws about cpu_step_budget image-steps per round of turns, not
    # n x steps. A share under `fewest_steps` draws a picture too blurred to help the search
    # (docs/BENCHMARKS.md, "Concurrent sessions"): those turns search with the text alone,
    # and the UI draws the picture the person sees after the reply, behind every waiting
    # search, in the steps the load then allows (at least `fewest_steps`). 0: always
    # `steps`. A GPU draws a batch of small images for about the cost of one, and always
    # draws `steps`. With `samples` K, n counts images (turns x K).
    cpu_step_budget: int = 0
    fewest_steps: int = 2
    # On a CPU, while other turns are being served, a turn's drawing waits up to this long
    # (after it asked) for theirs to join its batch (engine/model_thread.py). 0: never.
    gather_ms: float = 0.0

    def steps_for(self, images: int, steps: int) -> int:
        """Denoising steps for a CPU batch of `images` pseudo-images, of a generator that
        draws `steps` (see cpu_step_budget); 0: too busy to draw one worth searching with."""
        if not self.cpu_step_budget or images * steps <= self.cpu_step_budget:
            return steps
        share = self.cpu_step_budget // images
        return min(steps, share) if share >= self.fewest_steps else 0


def needs_text_tower(spec: GeneratorSpec) -> bool:
    return spec.kind == "world"


class GenerationError(RuntimeError):
    """A generator could not be built or run; the message says what to do."""

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
    # On a CPU a batch of pseudo-images costs about what its images cost one by one, so a
    # batch of n images (concurrent turns' x samples) draws min(steps, max(fewest_steps,
    # cpu_step_budget // n)) steps: turns arriving at once wait for about cpu_step_budget
    # image-steps of drawing, not n x steps. 0: always `steps`. A GPU draws a batch of small
    # images for about the cost of one, and always draws `steps`.
    cpu_step_budget: int = 0
    fewest_steps: int = 2

    def steps_for(self, images: int, steps: int) -> int:
        """Denoising steps for a CPU batch of `images` pseudo-images, of a generator that
        draws `steps` (see cpu_step_budget)."""
        if not self.cpu_step_budget or images * steps <= self.cpu_step_budget:
            return steps
        return min(steps, max(self.fewest_steps, self.cpu_step_budget // images))


def needs_text_tower(spec: GeneratorSpec) -> bool:
    return spec.kind == "world"


class GenerationError(RuntimeError):
    """A generator could not be built or run; the message says what to do."""

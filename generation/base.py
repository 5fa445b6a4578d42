"""One interface for every generator: `generate(prompts, seed, n) -> list[PIL.Image]`.

Image j of a prompt is always drawn from seed + j with its own random generator, so a
prompt's images do not depend on what else is in the batch; that makes batching a pure
speed-up and lets a small LRU cache answer repeated (prompt, seed, steps) without the model.
A call may draw fewer steps than the generator's own (a busy CPU, engine/engine.py).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict

import torch
from PIL import Image

from generation.spec import GenerationError


def check_prompts(prompts: list[str]) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    cleaned = [p.strip() if isinstance(p, str) else "" for p in prompts]
    if not cleaned or any(not p for p in cleaned):
        raise ValueError("empty prompt: describe the picture in a few words, "
                         "e.g. 'a red circle on a blue background'")
    return cleaned


class Generator(ABC):
    identity: str
    steps: int
    guidance: float
    size: int
    runtime: str = "torch"  # what runs the denoiser (the world generator may use "onnx")
    device: torch.device = torch.device("cpu")

    def __init__(self, cache_size: int = 256):
        self._cache: OrderedDict[tuple, Image.Image] = OrderedDict()
        self.cache_size = cache_size
        self.model_calls = 0  # how many batches reached the model (tests and benchmarks)
        # The scheduler's state and the cache are not thread-safe, and a server runs events
        # on several threads: one generation at a time per generator.
        self._lock = threading.Lock()

    def cache_key(self, prompt: str, seed: int, steps: int) -> tuple:
        return (self.identity, prompt, seed, steps, self.guidance, self.size)

    def generate(self, prompts: list[str], seed: int = 0, n: int = 1,
                 steps: int | None = None) -> list[Image.Image]:
        """n images per prompt, prompt-major: [p0 s, p0 s+1, ..., p1 s, ...], drawn in
        `steps` denoising steps (default: the generator's)."""
        prompts = check_prompts(prompts)
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        steps = self.steps if steps is None else steps
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        with self._lock:
            return self._generate(prompts, seed, n, steps)

    def cached(self, prompt: str, seed: int = 0, steps: int | None = None
               ) -> Image.Image | None:
        """The cached image of (prompt, seed) in `steps` steps (default: the generator's),
        if any: what a turn that drew it searched with, for showing without drawing again."""
        # No lock: one dict lookup is atomic, and this must not wait for a drawing under way.
        prompt = check_prompts([prompt])[0]  # the key `generate` stored it under
        image = self._cache.get(self.cache_key(prompt, seed, self.steps if steps is None
                                               else steps))
        return image.copy() if image is not None else None

    def _generate(self, prompts: list[str], seed: int, n: int, steps: int) -> list[Image.Image]:
        jobs = [(p, seed + j, steps) for p in prompts for j in range(n)]
        missing = list(dict.fromkeys(job for job in jobs
                                     if self.cache_key(*job) not in self._cache))
        if missing:
            self.model_calls += 1
            try:
                images = self._run([p for p, _, _ in missing], [s for _, s, _ in missing],
                                   steps)
            except torch.OutOfMemoryError as e:
                # Expected under load on a GPU: the turn goes on without a pseudo-image.
                # Any other error is a bug and propagates.
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise GenerationError(f"out of memory while generating: {e}") from e
            for job, image in zip(missing, images):
                self._cache[self.cache_key(*job)] = image
        out = []
        for job in jobs:
            key = self.cache_key(*job)
            self._cache.move_to_end(key)
            out.append(self._cache[key].copy())
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    @abstractmethod
    def _run(self, prompts: list[str], seeds: list[int], steps: int) -> list[Image.Image]:
        """Draw one image per (prompt, seed) pair in `steps` steps, as one batch."""

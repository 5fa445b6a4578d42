"""One training loop for every model itir trains, and what a finished run writes.

The bottom layer: it imports no other itir package, so the encoder, generator, fusion and
adapter trainers can all build on it.

- `train`: AdamW + warm-up/cosine, accelerate (device, mixed precision, checkpoints),
  resume, EMA, gradient clipping, a JSONL log and an evaluation hook.
- `write_model_card`, `run_facts`: the README.md of a trained model folder.
- `training_curve`: the loss plot that goes next to it.
- `symmetric_infonce`: the contrastive loss the encoder, fusion and adapter trainers share.
"""

from training.card import run_facts, write_model_card
from training.loop import TrainConfig, clear_checkpoints, step_generator, train
from training.losses import symmetric_infonce
from training.plots import training_curve

__all__ = ["TrainConfig", "clear_checkpoints", "run_facts", "step_generator",
           "symmetric_infonce", "train", "training_curve", "write_model_card"]

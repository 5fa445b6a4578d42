"""Model cards: the README.md of a trained model folder, in the Hugging Face format.

A card is the trainer's template filled with facts about the data and the run, a YAML
header the Hub reads (licence, library, tags), and the command that rebuilds the weights.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCardData

from training.loop import TrainConfig


def run_facts(cfg: TrainConfig, log: list[dict]) -> dict[str, Any]:
    """What every card can say about a run: its config, wall time, hardware and final loss."""
    if torch.cuda.is_available():
        hardware = torch.cuda.get_device_name()
    else:
        hardware = f"{torch.get_num_threads()} CPU thread(s)"
    return {**asdict(cfg), "minutes": log[-1]["seconds"] / 60, "hardware": hardware,
            "final_loss": log[-1]["loss"]}


def write_model_card(path: str | Path, template: str, *, command: str,
                     metadata: dict[str, Any] | None = None, **facts: Any) -> Path:
    """Write `template.format(**facts)` and how to reproduce it to `path`, under `metadata`
    (e.g. license, library_name, tags) as the card's YAML header."""
    body = template.format(**facts).strip()
    text = f"{body}\n\nReproduce: `{command}`\n"
    if metadata:
        text = f"---\n{ModelCardData(**metadata).to_yaml()}\n---\n\n{text}"
    path = Path(path)
    path.write_text(text)
    return path

"""The training loop shared by every itir trainer.

The caller brings a model, a batch sampler and a loss; the loop owns the rest: AdamW with
linear warm-up then cosine decay (diffusers' schedule), accelerate for the device, mixed
precision and checkpoints, gradient clipping, an optional EMA of the weights, a JSONL log,
an evaluation hook, and resuming. One process, one device (CPU or a GPU).

Resuming is exact. Batch `step` is `sample(step_generator(seed, step))` and the global torch
RNG (dropout) is reseeded from (seed, step) as well, so a resumed run draws the same batches
and dropout masks as an uninterrupted one; the weights, optimizer, schedule and EMA come
back from the checkpoint.

A run folder `out` holds
    train.log.jsonl           one JSON object per logged step, appended and flushed
    checkpoints/step-000500/  accelerate state: model, optimizer, schedule, EMA
and trainers write the finished model next to them.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from torch import nn
from tqdm import tqdm

LOG_NAME = "train.log.jsonl"
CHECKPOINTS = "checkpoints"

Batch = Mapping[str, Any]
Sampler = Callable[[torch.Generator], Batch]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
Evaluate = Callable[[nn.Module, int], dict[str, Any] | None]


@dataclass
class TrainConfig:
    """How to optimise. Trainers subclass it to add their data settings (batch size, ...)."""

    steps: int = 1000
    lr: float = 1e-3  # peak, reached after `warmup` steps, then cosine decay to 0
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float | None = None  # max global gradient norm
    ema_decay: float | None = None  # keep an EMA of the weights; the model ends with it
    seed: int = 0
    log_every: int = 50
    eval_every: int = 500  # and at the last step
    checkpoint_every: int = 500  # only when the run has an `out` folder
    keep_checkpoints: int = 2
    mixed_precision: str = "auto"  # auto: bf16 on a GPU that has it, none elsewhere; no|fp16|bf16


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random source of batch `step`: a pure function of (seed, step)."""
    return torch.Generator().manual_seed(_mix(seed, step, 0))


def clear_checkpoints(out: str | Path) -> None:
    """Delete a run's checkpoints, e.g. once the finished model is saved next to them."""
    shutil.rmtree(Path(out) / CHECKPOINTS, ignore_errors=True)


def train(model: nn.Module, sample: Sampler, loss_fn: LossFn, cfg: TrainConfig,
          out: str | Path | None = None, *, resume: bool = False,
          evaluate: Evaluate | None = None, desc: str = "train",
          lr_scales: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Train `model` in place for `cfg.steps` steps; return the log (one dict per logged step).

    Each step minimises `loss_fn(model, batch)` with `batch = sample(step_generator(seed,
    step))`, its tensors moved to the device. Every `eval_every` steps and at the end,
    `evaluate(model, step)` runs in eval mode without gradients, on the EMA weights when there
    is an EMA, and what it returns joins that step's log entry. With `out`, the log is written
    to out/train.log.jsonl and checkpoints to out/checkpoints/; `resume` continues from the
    latest checkpoint there (or starts afresh when there is none). `lr_scales` maps a
    parameter-name prefix to a multiple of `cfg.lr` for those parameters (e.g. pretrained
    layers that should move slowly); the rest train at `cfg.lr`.
    """
    accelerator = Accelerator(mixed_precision=resolved_precision(cfg.mixed_precision))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(_param_groups(model, cfg.lr, lr_scales or {}),
                            weight_decay=cfg.weight_decay)
    schedule = get_cosine_schedule_with_warmup(opt, cfg.warmup, cfg.steps)
    wrapped, opt, schedule = accelerator.prepare(model, opt, schedule)
    ema = None
    if cfg.ema_decay is not None:
        ema = EMAModel(params, decay=cfg.ema_decay)  # after prepare: shadows on the device
        accelerator.register_for_checkpointing(ema)  # so save_state/load_state include it

    run = Path(out) if out is not None else None
    start, log = 0, []
    if run is not None:
        run.mkdir(parents=True, exist_ok=True)
        latest = _latest_checkpoint(run)
        if latest is not None and not resume:
            # Hours of training sit there; starting over must be a decision, not a slip.
            raise ValueError(f"{run} holds checkpoints of an unfinished run (up to "
                             f"{latest.name}): add --resume to continue it, or delete "
                             f"{run / CHECKPOINTS} to start over")
        if latest is not None:
            accelerator.load_state(str(latest))
            if ema is not None:
                ema.to(accelerator.device)  # accelerate loads custom state onto the CPU
            start = int(latest.name.split("-")[1])
            log = [e for e in read_log(run / LOG_NAME) if e["step"] <= start]
        else:
            if resume:
                tqdm.write(f"no checkpoint under {run / CHECKPOINTS}; starting at step 0")
            clear_checkpoints(run)  # never resume into an older run's state later
        # The log keeps exactly the steps the weights have seen: lines a crashed run wrote
        # after its last checkpoint are dropped, as those steps will run again.
        _write_log(run / LOG_NAME, log)

    elapsed, t0 = (log[-1]["seconds"] if log else 0.0), time.time()
    log_file = open(run / LOG_NAME, "a") if run is not None else None
    wrapped.train()
    bar = tqdm(range(start, cfg.steps), desc=desc, unit="step", initial=start, total=cfg.steps,
               disable=not accelerator.is_local_main_process)
    try:
        for step in bar:
            # Dropout masks too are a function of (seed, step), so neither resuming nor what
            # the evaluation hook draws changes what is trained.
            torch.manual_seed(_mix(cfg.seed, step, 1))
            batch = {k: v.to(accelerator.device) if isinstance(v, torch.Tensor) else v
                     for k, v in sample(step_generator(cfg.seed, step)).items()}
            lr = opt.param_groups[0]["lr"]  # the base group's, when it has parameters
            with accelerator.autocast():
                loss = loss_fn(wrapped, batch)
            accelerator.backward(loss)
            if cfg.grad_clip is not None:
                accelerator.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            schedule.step()
            opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(params)

            done = step + 1
            evaluating = evaluate is not None and (done % cfg.eval_every == 0
                                                   or done == cfg.steps)
            if done % cfg.log_every == 0 or evaluating or done == cfg.steps:
                entry = {"step": done, "loss": round(loss.item(), 4), "lr": float(f"{lr:.4g}"),
                         "seconds": round(elapsed + time.time() - t0, 1)}
                if evaluating:
                    with accelerator.autocast():
                        entry.update(_evaluate(evaluate, model, done, params, ema) or {})
                log.append(entry)
                if log_file is not None:
                    log_file.write(json.dumps(entry) + "\n")
                    log_file.flush()
                bar.set_postfix(loss=entry["loss"], refresh=False)
            # After the log line, so a checkpoint's log is always complete.
            if run is not None and done % cfg.checkpoint_every == 0:
                _save_checkpoint(accelerator, run, done, cfg.keep_checkpoints)
    finally:
        if log_file is not None:
            log_file.close()

    if ema is not None:
        ema.copy_to(params)
    accelerator.unwrap_model(wrapped, keep_fp32_wrapper=False)  # undo mixed-precision patches
    model.eval()
    return log


def _param_groups(model: nn.Module, lr: float, scales: Mapping[str, float]) -> list[dict]:
    """AdamW groups: the base group (at `lr`) first, then one per prefix in `scales`."""
    groups: dict[str, list[nn.Parameter]] = {"": [], **{prefix: [] for prefix in scales}}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[next((pre for pre in scales if name.startswith(pre)), "")].append(p)
    if unused := [pre for pre in scales if not groups[pre]]:
        raise ValueError(f"no trainable parameter starts with {unused}")
    return [{"params": ps, "lr": lr * scales.get(pre, 1.0)} for pre, ps in groups.items() if ps]


def _evaluate(evaluate: Evaluate, model: nn.Module, step: int, params: list[nn.Parameter],
              ema: EMAModel | None) -> dict[str, Any] | None:
    if ema is not None:  # evaluate what the run will deliver: the EMA weights
        ema.store(params)
        ema.copy_to(params)
    model.eval()
    try:
        with torch.no_grad():
            return evaluate(model, step)
    finally:
        if ema is not None:
            ema.restore(params)
        model.train()


def _save_checkpoint(accelerator: Accelerator, run: Path, step: int, keep: int) -> None:
    folder = run / CHECKPOINTS / f"step-{step:06d}"
    tmp = folder.with_name(folder.name + ".partial")  # a crash mid-save leaves no "latest"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    for old in _checkpoints(run)[:-keep]:
        shutil.rmtree(old)


def _checkpoints(run: Path) -> list[Path]:
    found = [p for p in (run / CHECKPOINTS).glob("step-*") if re.fullmatch(r"step-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _latest_checkpoint(run: Path) -> Path | None:
    found = _checkpoints(run)
    return found[-1] if found else None


def read_log(path: Path) -> list[dict[str, Any]]:
    entries = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:  # the half-written last line of a killed run
                break
    return entries


def _write_log(path: Path, entries: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))


def _mix(*keys: int) -> int:
    # SeedSequence hashes its keys: neighbouring (seed, step) pairs get unrelated streams.
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0])


def resolved_precision(name: str) -> str:
    """`TrainConfig.mixed_precision` on this machine: no, fp16 or bf16."""
    if name != "auto":
        return name
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"

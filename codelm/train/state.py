"""What a run leaves on disk and reads back on --resume: checkpoints, RNG states, metrics.

A checkpoint RUN/checkpoints/step-NNNNNNN is a Hugging Face model folder (fp32
weights, config, tokenizer) plus optimizer.pt (AdamW state keyed by parameter
name, unsharded) and trainer_state.pt (data-stream position, RNG states,
counters; written last, so its presence marks a complete checkpoint).
Metrics are RUN/metrics.jsonl, one JSON object per line.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from codelm.files import atomic_write, atomic_write_stream
from codelm.model.checkpoint import build_model, save_hf
from codelm.train import distributed as D

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.pt"     # step, data position, RNG, counters: small, read by every process
OPTIMIZER_STATE = "optimizer.pt"       # AdamW moments by parameter name: large, read by rank 0 only


# --------------------------------------------------------------- checkpoints
def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (those with trainer_state.pt), oldest first."""
    d = run_dir / "checkpoints"
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def save_model_state(model_state: dict, config, directory: Path, tokenizer) -> None:
    """Full (unsharded) weights as an fp32 HF model folder."""
    save_hf(build_model(config, model_state, str(directory)), directory, tokenizer=tokenizer, dtype=torch.float32)


def save_checkpoint(run_dir: Path, step: int, model, optimizer, config, tokenizer, trainer_state: dict,
                    info: D.DistInfo, keep: int) -> Path | None:
    """Write RUN/checkpoints/step-NNNNNNN atomically (collective: every process must call it)."""
    model_state = D.full_model_state(model, info)
    optim_state = D.full_optimizer_state(model, optimizer, info)
    final = run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:07d}"
    if info.is_main:
        staging = final.with_name(f".{final.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        save_model_state(model_state, config, staging, tokenizer)
        torch.save(optim_state, staging / OPTIMIZER_STATE)
        # Written last: a folder with trainer_state.pt is a complete checkpoint.
        state = dict(trainer_state, rng=rng_state())
        atomic_write_stream(staging / TRAINER_STATE, lambda f: torch.save(state, f), binary=True)
        if final.exists():
            shutil.rmtree(final)
        # A folder swap (files.py writes files): the staged checkpoint takes its place whole.
        os.replace(staging, final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    D.barrier(info)
    return final


def read_trainer_state(checkpoint: Path) -> dict:
    """A checkpoint's counters, data-stream position and RNG states (every process reads them)."""
    return torch.load(checkpoint / TRAINER_STATE, map_location="cpu", weights_only=False)


def restore_optimizer(checkpoint: Path, model, optimizer, info: D.DistInfo) -> None:
    """Load a checkpoint's AdamW state: rank 0 reads it, FSDP scatters it to the other processes."""
    _prime_optimizer(optimizer)
    optim_state = torch.load(checkpoint / OPTIMIZER_STATE, map_location="cpu", weights_only=True) \
        if info.is_main else {}
    D.load_full_optimizer_state(model, optimizer, optim_state, info)


def _prime_optimizer(optimizer) -> None:
    """Create the optimizer's state tensors (a step with zero gradients and lr 0, which changes no
    weight) so a saved state can be loaded into them."""
    lrs = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = 0.0
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr


# ----------------------------------------------------------------------- RNG
def rng_state() -> dict:
    s = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ------------------------------------------------------------------- metrics
class MetricsLog:
    """RUN/metrics.jsonl, one JSON object per line; on resume, lines after the checkpoint are dropped."""

    def __init__(self, path: Path, keep_until_step: int | None, enabled: bool):
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        kept = []
        if keep_until_step is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break           # a line torn by a kill
                if rec.get("step", 0) <= keep_until_step:
                    kept.append(line + "\n")
        atomic_write(path, "".join(kept))
        self.f = open(path, "a", encoding="utf-8")

    def write(self, rec: dict) -> None:
        if self.enabled:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.enabled:
            self.f.close()


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]

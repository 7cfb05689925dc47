"""One training loop for every stage, driven by a recipe (`codelm train RECIPE.toml [--resume]`).

What one run does, in order:

1. plan: the recipe and the process layout resolved once into a `Plan` (batch
   geometry, learning-rate schedule, when to log, validate and save);
2. setup (train/setup.py): tokenizer, token files, model, AdamW;
3. resume (train/state.py): with `--resume`, the newest complete checkpoint's
   weights, optimizer state, data-stream position, RNG states and counters;
4. steps (train/step.py): linear warm-up then cosine decay to final_lr_ratio of
   the peak, global-norm gradient clipping, gradient accumulation over
   micro-batches, fp32 on CPU and bf16 autocast on GPU; validation loss every
   eval_every steps; a checkpoint every checkpoint_every steps; metrics to
   RUN/metrics.jsonl.

`--resume` restarts from the newest checkpoint and repeats the uninterrupted
run exactly: same batches, same losses. The finished model is RUN/final (HF
layout), with RUN/summary.json beside it.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from codelm.data.instruct import MaskedMixedStream
from codelm.data.packing import IGNORE_INDEX
from codelm.errors import CheckpointError, ConfigError
from codelm.model.config import ModelConfig
from codelm.tokenizer import Tokenizer
from codelm.train import distributed as D
from codelm.train.recipe import Recipe, load_recipe
from codelm.train.setup import (init_from_config, make_optimizer, model_config_for, place_model, prepare_data,
                                resolve_tokenizer, starting_model)
from codelm.train.state import (MetricsLog, list_checkpoints, read_trainer_state, restore_optimizer,
                                save_checkpoint, save_model_state, set_rng_state)
from codelm.train.step import autocast_for, evaluate, train_step
from codelm.files import atomic_write, claim_output, mark_output


# ---------------------------------------------------------------------- plan
def learning_rate(step: int, peak: float, warmup: int, total: int, final_ratio: float) -> float:
    """LR for optimizer step `step` (0-based): linear warm-up to `peak`, cosine down to peak * final_ratio."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if total <= warmup:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = peak * final_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Plan:
    """What the step loop reads, resolved once from the recipe and the process layout."""
    run_dir: Path
    seq_len: int
    seqs_per_step: int         # the global batch, in sequences, all processes together
    per_rank: int              # this process's share of it
    micro_batch: int           # sequences per forward pass
    max_steps: int             # the schedule's length; the final model is saved after it
    end_step: int              # where this invocation stops (train.stop_at_step, else max_steps)
    lr: float
    warmup_steps: int
    final_lr_ratio: float
    grad_clip: float
    precision: str             # fp32 or bf16 (autocast)
    log_every: int
    eval_every: int            # 0: only after the last step of the schedule
    eval_sequences: int
    checkpoint_every: int      # 0: only at end_step
    keep_checkpoints: int

    @property
    def tokens_per_step(self) -> int:
        return self.seqs_per_step * self.seq_len

    def lr_at(self, step: int) -> float:
        return learning_rate(step, self.lr, self.warmup_steps, self.max_steps, self.final_lr_ratio)

    def logs(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.end_step

    def evaluates(self, step: int) -> bool:
        return bool(self.eval_every and step % self.eval_every == 0) or step == self.max_steps

    def saves(self, step: int) -> bool:
        return bool(self.checkpoint_every and step % self.checkpoint_every == 0) or step == self.end_step


def resolve_plan(recipe: Recipe, info: D.DistInfo) -> Plan:
    t, d = recipe.train, recipe.data
    seqs_per_step = t.batch_tokens // d.seq_len
    if seqs_per_step % (info.world_size * t.micro_batch_size):
        raise ConfigError(f"{recipe.path}: train.batch_tokens / data.seq_len = {seqs_per_step} sequences per step "
                          f"is not a multiple of processes ({info.world_size}) x train.micro_batch_size "
                          f"({t.micro_batch_size})")
    precision = t.precision
    if precision == "auto":
        precision = "bf16" if info.device.type == "cuda" else "fp32"
    return Plan(
        run_dir=recipe.out_dir, seq_len=d.seq_len, seqs_per_step=seqs_per_step,
        per_rank=seqs_per_step // info.world_size, micro_batch=t.micro_batch_size, max_steps=t.max_steps,
        end_step=min(t.max_steps, t.stop_at_step) if t.stop_at_step else t.max_steps,
        lr=t.lr, warmup_steps=t.warmup_steps, final_lr_ratio=t.final_lr_ratio, grad_clip=t.grad_clip,
        precision=precision, log_every=t.log_every, eval_every=t.eval_every, eval_sequences=t.eval_sequences,
        checkpoint_every=t.checkpoint_every, keep_checkpoints=t.keep_checkpoints)


# ------------------------------------------------------------------- session
@dataclass
class Session:
    """What the steps work on, built once by setup."""
    recipe: Recipe
    info: D.DistInfo
    tokenizer: Tokenizer
    stream: MaskedMixedStream
    n_sources: int
    valid: dict                # {source name: validation TokenFile}
    model: torch.nn.Module
    config: ModelConfig
    optimizer: torch.optim.Optimizer
    autocast: AbstractContextManager
    params: list               # the trained parameters (all of them), for gradient clipping


@dataclass
class Progress:
    """The counters a checkpoint carries over to a resumed run."""
    step: int = 0
    tokens: int = 0
    elapsed_before: float = 0.0   # seconds spent by the invocations before this one
    train_loss: float | None = None
    valid_loss: float | None = None
    started: float = 0.0          # time.time() when this invocation's first step began

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.started


@dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path | None     # None when the run stopped early (stop_at_step)
    steps: int
    train_loss: float | None
    valid_loss: float | None
    tokens: int
    seconds: float


# ------------------------------------------------------------------ the loop
def train(recipe: Recipe, resume: bool = False, show_progress: bool = True, force: bool = False) -> TrainResult:
    """Run a recipe. The run folder must be new, empty, or a codelm run (refused otherwise unless `force`)."""
    claim_output(recipe.out_dir, "train-run", folder=True, force=force, what="run folder (run.out_dir)",
                 legacy=lambda p: (p / "recipe.json").exists())
    t = recipe.train
    info = D.init_distributed(t.device)
    try:
        return _train(recipe, resume, show_progress and info.is_main, info)
    finally:
        D.cleanup(info)


def _train(recipe: Recipe, resume: bool, show_progress: bool, info: D.DistInfo) -> TrainResult:
    if info.device.type == "cpu":
        t = recipe.train
        torch.set_num_threads(t.threads or max(1, (os.cpu_count() or 1) // info.local_world_size))
    plan = resolve_plan(recipe, info)
    resume_from = _start_run(recipe, plan.run_dir, resume, show_progress, info)
    session, saved = _setup(recipe, plan, resume_from, show_progress, info)
    progress = Progress()
    if saved is not None:
        _restore(session, resume_from, saved, progress)
    metrics = MetricsLog(plan.run_dir / "metrics.jsonl", progress.step if resume_from is not None else None,
                         info.is_main)
    if show_progress:
        print(f"train: {plan.run_dir}: {session.config.num_params() / 1e6:.1f}M parameters, "
              f"{info.world_size} process(es), {plan.seqs_per_step} x {plan.seq_len} tokens per step "
              f"({plan.per_rank // plan.micro_batch} micro-batches of {plan.micro_batch} per process), "
              f"steps {progress.step + 1}..{plan.end_step} of {plan.max_steps}")
    bar = tqdm(total=plan.max_steps, initial=progress.step, desc="train", unit="step", disable=not show_progress,
               dynamic_ncols=True)
    progress.started = time.time()
    started_at = progress.step
    while progress.step < plan.end_step:
        _step(plan, session, progress, metrics, bar, show_progress)
    bar.close()
    metrics.close()
    finished_before = resume_from is not None and started_at == progress.step
    final_dir = _finish(plan, session, progress, finished_before, show_progress)
    return TrainResult(plan.run_dir, final_dir, progress.step, progress.train_loss, progress.valid_loss,
                       progress.tokens, progress.elapsed())


def _start_run(recipe: Recipe, run_dir: Path, resume: bool, show_progress: bool, info: D.DistInfo) -> Path | None:
    """The checkpoint to continue from (None: from the beginning); RUN/recipe.json written."""
    checkpoints = list_checkpoints(run_dir)
    if checkpoints and not resume:
        raise ConfigError(f"{run_dir} already holds checkpoints (newest {checkpoints[-1].name}): "
                          "pass --resume to continue that run, or set run.out_dir to a new folder")
    resume_from = checkpoints[-1] if (resume and checkpoints) else None
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        mark_output(run_dir, "train-run")
        atomic_write(run_dir / "recipe.json", json.dumps(recipe.to_dict(), indent=1))
        if resume and resume_from is None and show_progress:
            print(f"train: no checkpoint in {run_dir}; starting from the beginning")
    D.barrier(info)
    return resume_from


def _setup(recipe: Recipe, plan: Plan, resume_from: Path | None, show_progress: bool,
           info: D.DistInfo) -> tuple[Session, dict | None]:
    """Tokenizer, data, model and optimizer; and the trainer state of resume_from (None without one)."""
    d = recipe.data
    tokenizer = resolve_tokenizer(recipe, plan.run_dir, info, show_progress)
    if d.fim_rate > 0:
        tokenizer.require_infilling()
    train_files, valid_files = prepare_data(recipe, plan.run_dir, tokenizer, info, show_progress)
    stream = MaskedMixedStream(train_files, [s.weight for s in d.sources], recipe.run.seed,
                               loss_weights=[s.loss_weight for s in d.sources],
                               prompt_loss_weights=[s.prompt_loss_weight for s in d.sources])

    # Model: rank 0 builds or loads it whole; with several processes the others start empty
    # (meta device) and receive their shards from rank 0 after sharding.
    expected = model_config_for(recipe, tokenizer)
    if expected is None and resume_from is not None:
        expected = init_from_config(recipe, tokenizer)
    saved = read_trainer_state(resume_from) if resume_from is not None else None
    if info.is_main or not info.enabled:
        model, config = starting_model(recipe, tokenizer, resume_from, expected)
    else:
        model, config = None, None
    config = D.broadcast_object(config, info)
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"the model has {config.vocab_size} embeddings, the tokenizer {tokenizer.vocab_size} tokens")
    model = place_model(model, config, recipe.train, info)
    optimizer = make_optimizer(model, recipe.train)
    session = Session(recipe, info, tokenizer, stream, len(train_files), valid_files, model, config, optimizer,
                      autocast_for(plan.precision, info.device), [p for p in model.parameters() if p.requires_grad])
    return session, saved


def _restore(s: Session, checkpoint: Path, saved: dict, progress: Progress) -> None:
    """Optimizer state, data-stream position, RNG states and counters from a checkpoint."""
    restore_optimizer(checkpoint, s.model, s.optimizer, s.info)
    s.stream.load_state_dict(saved["stream"])
    set_rng_state(saved["rng"])
    progress.step, progress.tokens, progress.elapsed_before = saved["step"], saved["tokens"], saved["elapsed_s"]
    progress.train_loss, progress.valid_loss = saved.get("train_loss"), saved.get("valid_loss")


def _step(plan: Plan, s: Session, progress: Progress, metrics: MetricsLog, bar, show_progress: bool) -> None:
    """One optimizer step, then whatever the plan asks after it: a metrics line, validation, a checkpoint."""
    t0 = time.time()
    lr = plan.lr_at(progress.step)
    for g in s.optimizer.param_groups:
        g["lr"] = lr
    batches, n_targets = _draw_batches(plan, s)
    loss_sum, grad_norm = train_step(s.model, s.optimizer, batches, n_targets, s.info, s.autocast, plan.grad_clip,
                                     s.params)
    progress.step += 1
    progress.tokens += plan.tokens_per_step
    progress.train_loss = D.all_reduce_sum([loss_sum], s.info)[0] / max(n_targets, 1.0)
    step = progress.step
    dt = time.time() - t0
    tok_s = plan.tokens_per_step / dt
    if plan.logs(step):
        metrics.write({"step": step, "loss": progress.train_loss, "lr": lr, "grad_norm": float(grad_norm),
                       "tokens": progress.tokens, "tokens_per_s": tok_s, "step_s": dt,
                       "epoch": s.stream.epochs()[0] if s.n_sources == 1 else s.stream.epochs(),
                       "elapsed_s": progress.elapsed()})
    bar.update(1)
    bar.set_postfix(loss=f"{progress.train_loss:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.1e}", refresh=False)
    if s.valid and plan.evaluates(step):
        _validate(plan, s, progress, metrics, bar, show_progress)
    if plan.saves(step):
        save_checkpoint(plan.run_dir, step, s.model, s.optimizer, s.config, s.tokenizer,
                        _trainer_state(s, progress), s.info, plan.keep_checkpoints)


def _draw_batches(plan: Plan, s: Session) -> tuple[list, float]:
    """This process's micro-batches of the next global batch, and the global batch's target count
    (the sum of the target weights)."""
    picks = s.stream.draw(plan.seqs_per_step)[s.info.rank * plan.per_rank:(s.info.rank + 1) * plan.per_rank]
    batches = []
    for i in range(0, plan.per_rank, plan.micro_batch):
        chunk = picks[i:i + plan.micro_batch]
        x, y = s.stream.fetch(chunk)
        batches.append((x, y, s.stream.target_weights(chunk, y)))
    n_targets = D.all_reduce_sum([sum(float((y != IGNORE_INDEX).sum()) if w is None else float(w.sum())
                                      for _, y, w in batches)], s.info)[0]
    return batches, n_targets


def _validate(plan: Plan, s: Session, progress: Progress, metrics: MetricsLog, bar, show_progress: bool) -> None:
    v = evaluate(s.model, s.valid, plan.eval_sequences, plan.micro_batch, s.info, s.autocast)
    if not v:
        return
    progress.valid_loss = v.get("all")
    metrics.write({"step": progress.step, "valid_loss": progress.valid_loss,
                   **{f"valid_loss/{k}": x for k, x in v.items() if k != "all"}})
    if show_progress:
        bar.write(f"step {progress.step}: train loss {progress.train_loss:.4f}, "
                  f"valid loss {progress.valid_loss:.4f}")


def _trainer_state(s: Session, progress: Progress) -> dict:
    """trainer_state.pt, less the RNG states (save_checkpoint adds them)."""
    return {"step": progress.step, "tokens": progress.tokens, "elapsed_s": progress.elapsed(),
            "stream": s.stream.state_dict(), "model_config": s.config.to_dict(), "recipe": s.recipe.to_dict(),
            "world_size": s.info.world_size, "train_loss": progress.train_loss, "valid_loss": progress.valid_loss}


def _finish(plan: Plan, s: Session, progress: Progress, finished_before: bool, show_progress: bool) -> Path | None:
    """RUN/final and RUN/summary.json once the schedule is done (None when stopped early).
    finished_before: resumed from the last step's checkpoint, with RUN/final already written."""
    if progress.step < plan.max_steps:
        if show_progress:
            print(f"train: stopped after step {progress.step} (train.stop_at_step); continue with --resume")
        return None
    final_dir = plan.run_dir / "final"
    already = finished_before and (final_dir / "config.json").exists()
    model_state = D.full_model_state(s.model, s.info) if not already else None
    if s.info.is_main and not already:
        save_model_state(model_state, s.config, final_dir, s.tokenizer)
        summary = {"steps": progress.step, "train_loss": progress.train_loss, "valid_loss": progress.valid_loss,
                   "tokens": progress.tokens, "seconds": progress.elapsed(), "final": str(final_dir)}
        atomic_write(plan.run_dir / "summary.json", json.dumps(summary, indent=1))
        if show_progress:
            print(f"train: done: {progress.step} steps, {progress.tokens:,} tokens; model in {final_dir}")
    elif s.info.is_main and show_progress:
        print(f"train: {plan.run_dir} had already finished its {progress.step} steps; model in {final_dir}")
    D.barrier(s.info)
    return final_dir


# ----------------------------------------------------------------------- CLI
def train_main(recipe_path, resume: bool = False, overrides: list[str] | None = None, force: bool = False) -> int:
    recipe = load_recipe(recipe_path, overrides or [])
    train(recipe, resume=resume, force=force)
    return 0

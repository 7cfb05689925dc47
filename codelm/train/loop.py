"""One training loop for every stage, driven by a recipe (`codelm train RECIPE.toml [--resume]`).

What one run does, in order:

1. tokenizer: load the one the recipe names (or the init checkpoint's), or train
   a byte-level BPE on the training data (kept in RUN/tokenizer, reused);
2. data: tokenize each source once into RUN/data/NAME.{train,valid}.bin (FIM on
   the training split, plain text for validation, so validation losses compare
   across FIM rates); rebuilt only when the corpus, tokenizer or settings change;
3. model: a preset with fresh weights (seeded), or a checkpoint to continue from;
4. steps: AdamW, linear warm-up then cosine decay to final_lr_ratio of the peak,
   global-norm gradient clipping, gradient accumulation over micro-batches,
   fp32 on CPU and bf16 autocast on GPU; validation loss every eval_every steps;
   a checkpoint every checkpoint_every steps; metrics to RUN/metrics.jsonl.

A checkpoint RUN/checkpoints/step-NNNNNNN is a Hugging Face model folder (fp32
weights, config, tokenizer) plus optimizer.pt (AdamW state keyed by parameter
name, unsharded) and trainer_state.pt (data-stream position, RNG states,
counters; written last, so its presence marks a complete checkpoint). `--resume`
restarts from the newest one and repeats the uninterrupted run exactly: same
batches, same losses. The finished model is RUN/final (HF layout).
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from codelm.data.corpus import corpus_texts
from codelm.data.fim import FimSettings
from codelm.data.instruct import InstructFile, MaskedMixedStream, batch_of, build_instruct_file
from codelm.data.packing import IGNORE_INDEX, TokenFile, build_token_file
from codelm.errors import CheckpointError, ConfigError, DataError
from codelm.train import distributed as D
from codelm.train.recipe import Recipe, load_recipe, source_name

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.pt"     # step, data position, RNG, counters: small, read by every process
OPTIMIZER_STATE = "optimizer.pt"       # AdamW moments by parameter name: large, read by rank 0 only
# The shape of a model: a checkpoint that differs in any of these is another architecture.
ARCH_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim")


# ------------------------------------------------------------------ schedule
def learning_rate(step: int, peak: float, warmup: int, total: int, final_ratio: float) -> float:
    """LR for optimizer step `step` (0-based): linear warm-up to `peak`, cosine down to peak * final_ratio."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if total <= warmup:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = peak * final_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------- tokenizer
def resolve_tokenizer(recipe: Recipe, run_dir: Path, info: D.DistInfo, show_progress: bool):
    from codelm.tokenizer import Tokenizer, train_tokenizer

    t = recipe.tokenizer
    if t.path is not None:
        return Tokenizer.load(t.path)
    if t.vocab_size is None:
        from codelm.model.checkpoint import find_tokenizer_path

        found = find_tokenizer_path(recipe.model.init_from)
        if found is None:
            raise ConfigError(f"{recipe.path}: model.init_from {recipe.model.init_from} has no tokenizer "
                              "beside it; set tokenizer.path")
        return Tokenizer.load(found)
    tok_dir = run_dir / "tokenizer"
    stamp = tok_dir / "codelm_training.json"
    want = {"vocab_size": t.vocab_size, "train_bytes": t.train_bytes, "min_frequency": t.min_frequency,
            "sources": [_source_fingerprint(s.path, "train") for s in recipe.data.sources]}
    if info.is_main:
        have = json.loads(stamp.read_text()) if stamp.exists() else None
        if have != want:
            texts = _tokenizer_training_texts(recipe, t.train_bytes)
            if show_progress:
                print(f"train: training a {t.vocab_size}-token BPE on {sum(map(len, texts)) / 1e6:.1f} MB of text")
            tok = train_tokenizer(texts, t.vocab_size, min_frequency=t.min_frequency, show_progress=show_progress)
            tmp = run_dir / ".tokenizer.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tok.save(tmp)
            (tmp / stamp.name).write_text(json.dumps(want, indent=1))
            shutil.rmtree(tok_dir, ignore_errors=True)
            os.replace(tmp, tok_dir)
    D.barrier(info)
    return Tokenizer.load(tok_dir)


def _tokenizer_training_texts(recipe: Recipe, max_bytes: int) -> list[str]:
    """Training-split texts of every source, each source contributing in proportion to its weight."""
    total_w = sum(s.weight for s in recipe.data.sources)
    texts: list[str] = []
    for s in recipe.data.sources:
        budget = int(max_bytes * s.weight / total_w)
        used = 0
        for text in corpus_texts(s.path, "train"):
            if used >= budget:
                break
            texts.append(text[: budget - used])
            used += len(texts[-1])
    if not texts:
        raise DataError(f"{recipe.path}: the data sources hold no text to train a tokenizer on")
    return texts


# ---------------------------------------------------------------------- data
def _split_file(path: str, split: str) -> Path | None:
    p = Path(path)
    if p.is_dir():
        f = p / f"{split}.jsonl"
        return f if f.is_file() else None
    if p.is_file():
        return p if split == "train" else None
    raise DataError(f"data source {path} does not exist (a corpus folder from `codelm corpus`, or a JSONL file)")


def _source_fingerprint(path: str, split: str) -> dict | None:
    f = _split_file(path, split)
    if f is None:
        return None
    st = f.stat()
    return {"file": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def prepare_data(recipe: Recipe, run_dir: Path, tokenizer, info: D.DistInfo, show_progress: bool):
    """Token files for every source: (train TokenFiles in recipe order, {name: valid TokenFile})."""
    d = recipe.data
    fim = FimSettings(d.fim_rate, d.fim_spm_rate, recipe.run.seed) if d.fim_rate > 0 else None
    data_dir = run_dir / "data"
    plan = []
    for s in d.sources:
        name = source_name(s)
        for split in ("train", "valid"):
            src = _split_file(s.path, split)
            if src is None:
                if split == "train":
                    raise DataError(f"data source {s.path}: no training data")
                continue
            plan.append((name, split, src, data_dir / f"{name}.{split}.bin"))
    kinds = {source_name(s): s.kind for s in d.sources}
    if info.is_main:
        for name, split, src, out in plan:
            if kinds[name] == "instruct":  # dialogs: whole per row, loss on assistant tokens only
                build_instruct_file(src, tokenizer, out, d.seq_len,
                                    settings={"source": _source_fingerprint(str(src), "train")})
                continue
            build_token_file(corpus_texts(src), tokenizer, out, d.seq_len,
                             fim=fim if split == "train" else None,
                             max_document_chars=d.max_document_chars,
                             settings={"source": _source_fingerprint(str(src), "train")},
                             show_progress=show_progress, desc=f"tokenize {name}/{split}")
    D.barrier(info)
    opener = {"text": TokenFile, "instruct": InstructFile}
    train = [opener[kinds[name]](out) for name, split, _, out in plan if split == "train"]
    valid = {name: opener[kinds[name]](out) for name, split, _, out in plan if split == "valid"}
    for f in train:
        if f.n_sequences == 0:
            raise DataError(f"{f.path}: the training data of this source is shorter than one sequence of "
                            f"{d.seq_len} tokens; add data or lower data.seq_len")
    return train, {k: v for k, v in valid.items() if v.n_sequences > 0}


# --------------------------------------------------------------------- model
def _arch(config) -> dict:
    return {f: getattr(config, f) for f in ARCH_FIELDS}


def _arch_text(config) -> str:
    return ", ".join(f"{k}={v}" for k, v in _arch(config).items())


def model_config_for(recipe: Recipe, tokenizer):
    """The config of a fresh model (preset) or of the checkpoint to continue from (read, not loaded)."""
    from codelm.model.config import ModelConfig

    m = recipe.model
    if m.preset is not None:
        base = ModelConfig.from_preset(m.preset)
        overrides = {"vocab_size": tokenizer.vocab_size, "max_seq_len": max(base.max_seq_len, recipe.data.seq_len),
                     "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id}
        overrides.update(m.config)
        config = ModelConfig.from_preset(m.preset, **overrides)
        if config.vocab_size < tokenizer.vocab_size:
            raise ConfigError(f"{recipe.path}: model.config.vocab_size={config.vocab_size} is smaller than the "
                              f"tokenizer's {tokenizer.vocab_size} tokens")
        return config
    return None


def _check_vocab(config, tokenizer, recipe: Recipe, source: str) -> None:
    if tokenizer.vocab_size > config.vocab_size and not recipe.model.extend_vocab:
        raise CheckpointError(f"{source}: the model has {config.vocab_size} embeddings but the tokenizer "
                              f"{tokenizer.vocab_size} tokens; set model.extend_vocab = true to add rows "
                              "(as Code Llama did to Llama 2 for its infilling tokens)")


def extend_vocab(model, new_size: int) -> None:
    """Grow embeddings and output to new_size rows; new rows start at the mean of the old ones."""
    old = model.config.vocab_size
    if new_size <= old:
        return
    with torch.no_grad():
        for name in ("tok_embeddings", "output"):
            w = getattr(model, name).weight
            extra = w.mean(dim=0, keepdim=True).expand(new_size - old, -1)
            bigger = torch.cat([w, extra], dim=0)
            if name == "tok_embeddings":
                layer = torch.nn.Embedding(new_size, w.shape[1], device=w.device, dtype=w.dtype)
            else:
                layer = torch.nn.Linear(w.shape[1], new_size, bias=False, device=w.device, dtype=w.dtype)
            layer.weight.copy_(bigger)
            setattr(model, name, layer)
    model.config.vocab_size = new_size


def build_model(recipe: Recipe, tokenizer, resume_from: Path | None, expected_config):
    """(model on CPU in fp32, config). Continues from resume_from if given, else init_from, else a preset."""
    from codelm.model.checkpoint import load_checkpoint
    from codelm.model.llama import Transformer

    m = recipe.model
    if resume_from is not None:
        model, config = load_checkpoint(resume_from, dtype=torch.float32)
        if expected_config is not None and _arch(config) != _arch(expected_config):
            raise CheckpointError(
                f"{resume_from}: checkpoint architecture ({_arch_text(config)}) differs from the recipe's "
                f"({_arch_text(expected_config)}); resume with the recipe that made it, or use another run.out_dir")
        return model.train(), config
    if m.init_from is not None:
        model, config = load_checkpoint(m.init_from, dtype=torch.float32)
        _check_vocab(config, tokenizer, recipe, m.init_from)
        if m.config:
            for k, v in m.config.items():   # rope_theta / rope_scaling / max_seq_len (LCFT), norm_eps
                setattr(config, k, v)
            model.reset_rope()
        if config.max_seq_len < recipe.data.seq_len:
            config.max_seq_len = recipe.data.seq_len
            model.reset_rope()
        extend_vocab(model, tokenizer.vocab_size)
        return model.train(), config
    torch.manual_seed(recipe.run.seed)
    model = Transformer(expected_config)
    return model.train(), expected_config


def _model_from_state(config, state: dict):
    from codelm.model.llama import Transformer

    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict(state, assign=True, strict=True)
    return model


def _enable_activation_checkpointing(model) -> None:
    """Recompute each block's activations in backward (memory for time); state-dict names stay the same."""
    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


def make_optimizer(model, t) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices and embeddings, not on norm gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel (CPU and GPU) is one pass over each tensor; the default takes ~10 elementwise passes.
    fused = all(not hasattr(p, "device_mesh") for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, fused=fused or None)


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


# --------------------------------------------------------------- checkpoints
def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (those with trainer_state.pt), oldest first."""
    d = run_dir / "checkpoints"
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def save_checkpoint(run_dir: Path, step: int, model, optimizer, config, tokenizer, trainer_state: dict,
                    info: D.DistInfo, keep: int) -> Path | None:
    """Write RUN/checkpoints/step-NNNNNNN atomically (collective: every process must call it)."""
    from codelm.model.checkpoint import save_hf

    model_state = D.full_model_state(model, info)
    optim_state = D.full_optimizer_state(model, optimizer, info)
    final = run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:07d}"
    if info.is_main:
        staging = final.with_name(f".{final.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        save_hf(_model_from_state(config, model_state), staging, tokenizer=tokenizer, dtype=torch.float32)
        torch.save(optim_state, staging / OPTIMIZER_STATE)
        # Written last: a folder with trainer_state.pt is a complete checkpoint.
        torch.save(dict(trainer_state, rng=_rng_state()), staging / (TRAINER_STATE + ".tmp"))
        os.replace(staging / (TRAINER_STATE + ".tmp"), staging / TRAINER_STATE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    D.barrier(info)
    return final


def _rng_state() -> dict:
    s = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s: dict) -> None:
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
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
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


# ------------------------------------------------------------------ the loop
@dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path | None     # None when the run stopped early (stop_at_step)
    steps: int
    train_loss: float | None
    valid_loss: float | None
    tokens: int
    seconds: float


class _SumCrossEntropy(torch.autograd.Function):
    """Summed token cross-entropy over fp32 logits [..., V], IGNORE_INDEX targets skipped.

    Same value and gradient as F.cross_entropy(reduction="sum"), with fewer passes over the
    [tokens, V] tensors, which dominate memory traffic with a 32k vocabulary. The logits are
    overwritten with their log-softmax (nothing else needs them: the output projection's
    backward keeps its inputs, not its output) and backward turns that, in place again, into
    the gradient (softmax minus one-hot, scaled). The library allocates a log-softmax copy, a
    zero-filled one-hot gradient and a third tensor for the result; on 2,048 x 32,016 logits
    here, projection + loss forward and backward take 0.49 s against 0.71 s.
    """

    @staticmethod
    def forward(ctx, logits, targets, weights=None):
        ctx.set_materialize_grads(False)
        flat = logits.view(-1, logits.shape[-1])
        t = targets.reshape(-1)
        valid = t != IGNORE_INDEX
        safe = torch.where(valid, t, 0)
        torch._log_softmax(flat, -1, False, out=flat)
        picked = flat.gather(1, safe[:, None]).squeeze(1)
        # Per-token weights (a source's loss_weight); None: every target counts once.
        w = valid if weights is None else valid * weights.reshape(-1).to(flat.dtype)
        ctx.mark_dirty(logits)
        ctx.save_for_backward(logits, safe, w)
        ctx.all_ones = weights is None and bool(valid.all())
        return -(picked * w).sum(), logits

    @staticmethod
    def backward(ctx, grad_out, _grad_logp):
        logp, safe, w = ctx.saved_tensors
        grad = logp.view(-1, logp.shape[-1]).exp_()
        grad.scatter_add_(1, safe[:, None], torch.full_like(safe[:, None], -1, dtype=grad.dtype))
        if ctx.all_ones:
            grad.mul_(grad_out)
        else:
            grad.mul_((w.to(grad.dtype) * grad_out)[:, None])
        return logp, None, None


def _cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Summed token loss, each target times its weight when weights ([B, T]) are given. In training
    (fp32 logits that are no view) the logits are consumed: they hold log-probabilities afterwards."""
    if (logits.dtype == torch.float32 and logits.requires_grad and logits._base is None
            and logits.is_contiguous() and torch.is_grad_enabled()):
        return _SumCrossEntropy.apply(logits, targets, weights)[0]
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                             ignore_index=IGNORE_INDEX, reduction="none")
    return losses.sum() if weights is None else (losses * weights.reshape(-1).to(losses.dtype)).sum()


def train_step(model, optimizer, batches, n_targets: float, info: D.DistInfo, autocast, grad_clip: float,
               params) -> tuple[float, float]:
    """One optimizer step over this process's micro-batches: (sum of token losses here, gradient norm).

    A micro-batch is (inputs, targets) or (inputs, targets, [B, T] target weights or None).
    The gradient is that of the mean loss over the n_targets target tokens of the global batch
    (the sum of their weights, when weighted): each process scales by world_size / n_targets
    because FSDP averages gradients across processes.
    """
    scale = info.world_size / max(n_targets, 1.0)
    loss_sum = 0.0
    for j, (x, y, *w) in enumerate(batches):
        D.set_gradient_sync(model, j == len(batches) - 1, info)
        with autocast:
            logits = model(x.to(info.device, non_blocking=True))
        weights = w[0].to(info.device) if w and w[0] is not None else None
        loss = _cross_entropy_sum(logits, y.to(info.device, non_blocking=True), weights)
        (loss * scale).backward()
        loss_sum += float(loss.detach())
        del logits, loss
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, float(grad_norm)


@torch.no_grad()
def evaluate(model, valid: dict, n_sequences: int, micro_batch: int, info: D.DistInfo, autocast) -> dict:
    """Mean loss per target token over the first n_sequences of each validation file ({name: loss})."""
    model.eval()
    out = {}
    total = [0.0, 0.0]
    for name, f in valid.items():
        n = min(n_sequences, f.n_sequences) // info.world_size * info.world_size
        if n == 0:
            continue
        mine = list(range(info.rank, n, info.world_size))   # same count on every process
        s = [0.0, 0.0]
        for i in range(0, len(mine), micro_batch):
            x, y = batch_of(f, mine[i:i + micro_batch])
            with autocast:
                logits = model(x.to(info.device))
            s[0] += float(_cross_entropy_sum(logits, y.to(info.device)))
            s[1] += float((y != IGNORE_INDEX).sum())
        s = D.all_reduce_sum(s, info)
        if s[1] > 0:
            out[name] = s[0] / s[1]
            total[0] += s[0]
            total[1] += s[1]
    if total[1] > 0:
        out["all"] = total[0] / total[1]
    model.train()
    return out


def _autocast(precision: str, device: torch.device):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def train(recipe: Recipe, resume: bool = False, show_progress: bool = True, force: bool = False) -> TrainResult:
    """Run a recipe. The run folder must be new, empty, or a codelm run (refused otherwise unless `force`)."""
    from codelm.files import claim_output

    claim_output(recipe.out_dir, "train-run", folder=True, force=force, what="run folder (run.out_dir)",
                 legacy=lambda p: (p / "recipe.json").exists())
    t = recipe.train
    info = D.init_distributed(t.device)
    try:
        return _train(recipe, resume, show_progress and info.is_main, info)
    finally:
        D.cleanup(info)


def _train(recipe: Recipe, resume: bool, show_progress: bool, info: D.DistInfo) -> TrainResult:
    from tqdm import tqdm

    t, d = recipe.train, recipe.data
    if info.device.type == "cpu":
        torch.set_num_threads(t.threads or max(1, (os.cpu_count() or 1) // info.local_world_size))
    run_dir = recipe.out_dir
    seqs_per_step = t.batch_tokens // d.seq_len
    if seqs_per_step % (info.world_size * t.micro_batch_size):
        raise ConfigError(f"{recipe.path}: train.batch_tokens / data.seq_len = {seqs_per_step} sequences per step "
                          f"is not a multiple of processes ({info.world_size}) x train.micro_batch_size "
                          f"({t.micro_batch_size})")
    per_rank = seqs_per_step // info.world_size

    checkpoints = list_checkpoints(run_dir)
    if checkpoints and not resume:
        raise ConfigError(f"{run_dir} already holds checkpoints (newest {checkpoints[-1].name}): "
                          "pass --resume to continue that run, or set run.out_dir to a new folder")
    resume_from = checkpoints[-1] if (resume and checkpoints) else None
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        from codelm.files import mark_output

        mark_output(run_dir, "train-run")
        (run_dir / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=1))
        if resume and resume_from is None and show_progress:
            print(f"train: no checkpoint in {run_dir}; starting from the beginning")
    D.barrier(info)

    tokenizer = resolve_tokenizer(recipe, run_dir, info, show_progress)
    if d.fim_rate > 0:
        tokenizer.require_infilling()
    train_files, valid_files = prepare_data(recipe, run_dir, tokenizer, info, show_progress)
    stream = MaskedMixedStream(train_files, [s.weight for s in d.sources], recipe.run.seed,
                               loss_weights=[s.loss_weight for s in d.sources],
                               prompt_loss_weights=[s.prompt_loss_weight for s in d.sources])

    # Model: rank 0 builds or loads it whole; with several processes the others start empty
    # (meta device) and receive their shards from rank 0 after sharding.
    expected = model_config_for(recipe, tokenizer)
    if expected is None and resume_from is not None:
        expected = _init_config(recipe, tokenizer)
    state = None
    if resume_from is not None:
        state = torch.load(resume_from / TRAINER_STATE, map_location="cpu", weights_only=False)
    if info.is_main or not info.enabled:
        model, config = build_model(recipe, tokenizer, resume_from, expected)
    else:
        model, config = None, None
    config = D.broadcast_object(config, info)
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"the model has {config.vocab_size} embeddings, the tokenizer {tokenizer.vocab_size} tokens")
    if info.enabled:
        model = _shard_from_rank0(model, config, info)
    else:
        model = model.to(info.device)
    if t.activation_checkpointing:
        _enable_activation_checkpointing(model)
    if t.compile:
        model.compile()
    optimizer = make_optimizer(model, t)
    autocast = _autocast(t.precision, info.device)

    step, tokens_seen, elapsed_before = 0, 0, 0.0
    resumed_losses = (None, None)
    if state is not None:
        _prime_optimizer(optimizer)
        optim_state = torch.load(resume_from / OPTIMIZER_STATE, map_location="cpu", weights_only=True) \
            if info.is_main else {}
        D.load_full_optimizer_state(model, optimizer, optim_state, info)
        del optim_state
        stream.load_state_dict(state["stream"])
        _set_rng_state(state["rng"])
        step, tokens_seen, elapsed_before = state["step"], state["tokens"], state["elapsed_s"]
        resumed_losses = (state.get("train_loss"), state.get("valid_loss"))
        state = None
    metrics = MetricsLog(run_dir / "metrics.jsonl", step if resume_from is not None else None, info.is_main)

    end_step = min(t.max_steps, t.stop_at_step) if t.stop_at_step else t.max_steps
    if show_progress:
        print(f"train: {run_dir}: {config.num_params() / 1e6:.1f}M parameters, {info.world_size} process(es), "
              f"{seqs_per_step} x {d.seq_len} tokens per step "
              f"({per_rank // t.micro_batch_size} micro-batches of {t.micro_batch_size} per process), "
              f"steps {step + 1}..{end_step} of {t.max_steps}")
    bar = tqdm(total=t.max_steps, initial=step, desc="train", unit="step", disable=not show_progress,
               dynamic_ncols=True)
    last_loss, last_valid = resumed_losses
    started = time.time()

    def trainer_state():
        return {"step": step, "tokens": tokens_seen, "elapsed_s": elapsed_before + time.time() - started,
                "stream": stream.state_dict(), "model_config": config.to_dict(), "recipe": recipe.to_dict(),
                "world_size": info.world_size, "train_loss": last_loss, "valid_loss": last_valid}

    params = [p for p in model.parameters() if p.requires_grad]
    started_at = step
    while step < end_step:
        t0 = time.time()
        lr = learning_rate(step, t.lr, t.warmup_steps, t.max_steps, t.final_lr_ratio)
        for g in optimizer.param_groups:
            g["lr"] = lr
        picks = stream.draw(seqs_per_step)[info.rank * per_rank:(info.rank + 1) * per_rank]
        batches = []
        for i in range(0, per_rank, t.micro_batch_size):
            chunk = picks[i:i + t.micro_batch_size]
            x, y = stream.fetch(chunk)
            batches.append((x, y, stream.target_weights(chunk, y)))
        n_targets = D.all_reduce_sum([sum(float((y != IGNORE_INDEX).sum()) if w is None else float(w.sum())
                                          for _, y, w in batches)], info)[0]
        loss_sum, grad_norm = train_step(model, optimizer, batches, n_targets, info, autocast, t.grad_clip, params)
        step += 1
        tokens_seen += seqs_per_step * d.seq_len
        last_loss = D.all_reduce_sum([loss_sum], info)[0] / max(n_targets, 1.0)
        dt = time.time() - t0
        tok_s = seqs_per_step * d.seq_len / dt
        if step % t.log_every == 0 or step == end_step:
            metrics.write({"step": step, "loss": last_loss, "lr": lr, "grad_norm": float(grad_norm),
                           "tokens": tokens_seen, "tokens_per_s": tok_s, "step_s": dt,
                           "epoch": stream.epochs()[0] if len(train_files) == 1 else stream.epochs(),
                           "elapsed_s": elapsed_before + time.time() - started})
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.1e}", refresh=False)
        if valid_files and ((t.eval_every and step % t.eval_every == 0) or step == t.max_steps):
            v = evaluate(model, valid_files, t.eval_sequences, t.micro_batch_size, info, autocast)
            if v:
                last_valid = v.get("all")
                metrics.write({"step": step, "valid_loss": last_valid,
                               **{f"valid_loss/{k}": x for k, x in v.items() if k != "all"}})
                if show_progress:
                    bar.write(f"step {step}: train loss {last_loss:.4f}, valid loss {last_valid:.4f}")
        if (t.checkpoint_every and step % t.checkpoint_every == 0) or step == end_step:
            save_checkpoint(run_dir, step, model, optimizer, config, tokenizer, trainer_state(), info,
                            t.keep_checkpoints)
    bar.close()
    metrics.close()

    final_dir = None
    if step >= t.max_steps:
        final_dir = run_dir / "final"
        already = resume_from is not None and started_at == step and (final_dir / "config.json").exists()
        model_state = D.full_model_state(model, info) if not already else None
        if info.is_main and not already:
            from codelm.model.checkpoint import save_hf

            save_hf(_model_from_state(config, model_state), final_dir, tokenizer=tokenizer, dtype=torch.float32)
            summary = {"steps": step, "train_loss": last_loss, "valid_loss": last_valid, "tokens": tokens_seen,
                       "seconds": elapsed_before + time.time() - started, "final": str(final_dir)}
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
            if show_progress:
                print(f"train: done: {step} steps, {tokens_seen:,} tokens; model in {final_dir}")
        elif info.is_main and show_progress:
            print(f"train: {run_dir} had already finished its {step} steps; model in {final_dir}")
        D.barrier(info)
    elif show_progress:
        print(f"train: stopped after step {step} (train.stop_at_step); continue with --resume")
    return TrainResult(run_dir, final_dir, step, last_loss, last_valid, tokens_seen,
                       elapsed_before + time.time() - started)


def _init_config(recipe: Recipe, tokenizer):
    """Architecture a run continuing from model.init_from has (for checking a resume checkpoint)."""
    from codelm.model.checkpoint import _read_json, config_from_hf, detect_layout, load_checkpoint

    p = Path(recipe.model.init_from)
    if detect_layout(p) == "hf":
        config = config_from_hf(_read_json(p / "config.json"), str(p / "config.json"))
    else:
        _, config = load_checkpoint(p)
    if recipe.model.extend_vocab and tokenizer.vocab_size > config.vocab_size:
        config.vocab_size = tokenizer.vocab_size
    return config


def _shard_from_rank0(model, config, info: D.DistInfo):
    """Shard the model; rank 0's weights are broadcast into every process's shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from codelm.model.llama import Transformer

    full = {k: v.detach().clone() for k, v in model.state_dict().items()} if info.is_main else {}
    if not info.is_main:
        with torch.device("meta"):
            model = Transformer(config)
    D.shard_model(model, info)
    model.to_empty(device=info.device)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    model.reset_rope()
    return model.train()


# ----------------------------------------------------------------------- CLI
def train_main(recipe_path, resume: bool = False, overrides: list[str] | None = None, force: bool = False) -> int:
    recipe = load_recipe(recipe_path, overrides or [])
    train(recipe, resume=resume, force=force)
    return 0

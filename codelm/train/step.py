"""One optimizer step over a global batch, and the validation loss.

Both run on every process alike (train/distributed.py): each process feeds its
share of the sequences and the sums are reduced across processes, so N processes
follow the trajectory of one with the same global batch.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from codelm.data.instruct import batch_of
from codelm.data.packing import IGNORE_INDEX
from codelm.train import distributed as D
from codelm.train.loss import cross_entropy_sum


def autocast_for(precision: str, device: torch.device):
    """The context a forward pass runs in: bf16 autocast, or nothing (fp32). "auto": bf16 on GPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


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
        loss = cross_entropy_sum(logits, y.to(info.device, non_blocking=True), weights)
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
    """Mean loss per target token over the first n_sequences of each validation file ({name: loss},
    and "all": over every file's targets together)."""
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
            s[0] += float(cross_entropy_sum(logits, y.to(info.device)))
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

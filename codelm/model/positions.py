"""Position encodings: rotary embeddings (RoPE) with a configurable base period θ and scaling hook.

codelm stores q/k projections in the "rotate-half" layout (Hugging Face's): the two members of a
rotation pair are dims i and i + head_dim/2. Meta's checkpoints pair adjacent dims (0,1), (2,3), ...;
checkpoint.py permutes the q/k weights when reading or writing that layout, so the math here is one.
"""
from __future__ import annotations

import torch

from codelm.errors import ConfigError


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """Inverse frequencies θ^(-2i/d), i = 0..d/2-1, in fp32 (as the reference computes them)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim))
    if scaling:
        kind = scaling.get("type", scaling.get("rope_type"))
        if kind == "linear":
            # Position interpolation (Chen et al. 2023): positions divided by `factor`,
            # which is the same as dividing every frequency by it.
            inv_freq = inv_freq / float(scaling["factor"])
        elif kind in (None, "default"):
            pass
        else:
            raise ConfigError(f"rope_scaling type {kind!r} is not supported; use 'linear' or none")
    return inv_freq


def rope_cos_sin(inv_freq: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and *signed* sin tables of shape [length, head_dim] for positions 0..length-1.

    Rotate-half layout: pair (i, i+d/2) turns by angle_i. The sign of the first half of sin is folded
    into the table, so apply_rope needs no negation: x*cos + swap_halves(x)*sin.
    """
    pos = torch.arange(length, dtype=torch.float32, device=inv_freq.device)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    sin = emb.sin()
    half = inv_freq.shape[0]
    sin[:, :half] = -sin[:, :half]
    return emb.cos(), sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by angles given as cos and signed sin tables [B|1, 1, T, D]."""
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return torch.addcmul(x * cos, swapped, signed_sin)

"""Position encodings: rotary embeddings (RoPE) with base period θ and its scaling variants, and ALiBi.

RoPE variants (`rope_scaling` in the model config, same names and formulas as transformers' `rope_type`):
  linear   position interpolation (Chen et al. 2023): positions divided by `factor`.
  dynamic  NTK-aware scaling: beyond the trained length L the base grows to
           θ·(factor·n/L − (factor−1))^(d/(d−2)) for a sequence of n tokens; inside L nothing changes.
  yarn     (Peng et al. 2023): high-frequency dims kept, low-frequency dims interpolated by `factor`,
           a linear ramp between (beta_fast, beta_slow rotations), and cos/sin scaled by 0.1·ln(factor)+1.
Raising θ itself (Code Llama's LCFT: 1e4 → 1e6) is just `rope_theta`.

codelm stores q/k projections in the "rotate-half" layout (Hugging Face's): the two members of a
rotation pair are dims i and i + head_dim/2. Meta's checkpoints pair adjacent dims (0,1), (2,3), ...;
checkpoint.py permutes the q/k weights when reading or writing that layout, so the math here is one.

ALiBi (Press et al. 2022) adds −slope_h·(i−j) to the attention score of query i and key j, with head
slopes a geometric sequence, and no rotary embedding at all.
"""
from __future__ import annotations

import math

import torch

from codelm.errors import ConfigError

ROPE_TYPES = ("default", "linear", "dynamic", "yarn")


def scaling_type(scaling: dict | None) -> str:
    if not scaling:
        return "default"
    kind = scaling.get("type") or scaling.get("rope_type") or "default"
    if kind not in ROPE_TYPES:
        raise ConfigError(f"rope_scaling type {kind!r} is not supported; choose one of {list(ROPE_TYPES)}")
    if kind != "default" and not (isinstance(scaling.get("factor"), (int, float)) and scaling["factor"] > 0):
        raise ConfigError(f"rope_scaling {kind!r} needs a positive 'factor', got {scaling.get('factor')!r}")
    return kind


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None, seq_len: int | None = None,
                  max_seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies θ^(-2i/d) (fp32, as the reference computes them) after scaling, and the factor
    that multiplies cos and sin (1 except for YaRN). seq_len matters for dynamic NTK only; max_seq_len is
    the length the model was trained at (yarn reads `original_max_position_embeddings` if given)."""
    kind = scaling_type(scaling)
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    if kind == "dynamic":
        n = max(seq_len or 0, max_seq_len)
        factor = float(scaling["factor"])
        theta = theta * ((factor * n / max_seq_len) - (factor - 1)) ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / (theta ** exponents)
    if kind == "linear":
        return inv_freq / float(scaling["factor"]), 1.0
    if kind == "yarn":
        return _yarn(inv_freq, head_dim, theta, scaling, max_seq_len)
    return inv_freq, 1.0


def _yarn(inv_freq, head_dim, theta, scaling, max_seq_len):
    factor = float(scaling["factor"])
    original = scaling.get("original_max_position_embeddings") or max_seq_len
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")

        def get_mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attention_factor = (get_mscale(factor, mscale) / get_mscale(factor, mscale_all) if mscale and mscale_all
                            else get_mscale(factor))
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def dim_of(rotations):  # the dim index that turns `rotations` times over the original length
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (high frequency, kept as is); 0: interpolate by factor
    return inv_freq / factor * (1 - keep) + inv_freq * keep, float(attention_factor)


def rope_cos_sin(inv_freq: torch.Tensor, length: int, attention_factor: float = 1.0,
                 offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and *signed* sin tables of shape [length, head_dim] for positions offset..offset+length-1.

    Rotate-half layout: pair (i, i+d/2) turns by angle_i. The sign of the first half of sin is folded
    into the table, so apply_rope needs no negation: x*cos + swap_halves(x)*sin.
    """
    pos = torch.arange(offset, offset + length, dtype=torch.float32, device=inv_freq.device)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    half = inv_freq.shape[0]
    sin[:, :half] = -sin[:, :half]
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by angles given as cos and signed sin tables [B|1, 1, T, D]."""
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return torch.addcmul(x * cos, swapped, signed_sin)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's head slopes: 2^(-8/n), 2^(-16/n), ... for n a power of two; otherwise the slopes of the
    nearest smaller power of two m, then every other slope of 2m (Press et al., 2022, §3)."""

    def geometric(n):
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    m = 2 ** math.floor(math.log2(n_heads))
    slopes = geometric(m)
    if m < n_heads:
        slopes += geometric(2 * m)[0::2][: n_heads - m]
    return torch.tensor(slopes, dtype=torch.float32, device="cpu")


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Additive bias [B|1, H, T, S] = −slope_h · (q − k) for keys at or before the query (callers mask the rest).

    q_pos [B|1, T], k_pos [B|1, S] are positions (so left padding shifts nothing)."""
    dist = (q_pos[:, :, None] - k_pos[:, None, :]).clamp(min=0).float()
    return -slopes[None, :, None, None] * dist[:, None]


def alibi_columns(slopes: torch.Tensor, k_pos: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ALiBi as one more dimension of q and k, so that causal attention needs no float mask.

    Softmax ignores what is constant along a query's row, and −slope_h · (q − k) is −slope_h · q (constant)
    plus slope_h · k: so q gets the column slope_h · √head_dim [1, H, 1, 1] and k the column k − k_last
    [B|1, 1, S, 1] (positions counted back from the last key, so that the keys near the end, those the
    last queries weigh most, keep small values), and attention runs at scale 1/√head_dim. In float32 the
    scores then differ from the explicit bias by rounding only (about 1e-7 of slope · distance)."""
    k_col = (k_pos - k_pos[:, -1:]).float()[:, None, :, None]
    return slopes[None, :, None, None] * head_dim ** 0.5, k_col

"""The Llama 2 / Code Llama network in one file: RMSNorm, SwiGLU, RoPE, grouped-query attention, KV cache.

The model knows nothing of parallelism or checkpoints; FSDP is applied to `model.layers[i]` and the
root from outside (train/distributed.py), and checkpoint.py maps weight names to HF and Meta layouts.
q/k/v and the SwiGLU gate/up projections are each stored fused (one matmul instead of three / two),
which matters for CPU decoding where per-op overhead dominates. Generation runs these weights through
codelm/generate/engine.py (continuous batching, per-row positions, bf16/int8 copies); the cache here
serves whole-batch forward passes (training-time evaluation, long-context measurements).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from codelm.model.config import ModelConfig
from codelm.model.positions import alibi_bias, alibi_columns, alibi_slopes, apply_rope, rope_cos_sin, rope_inv_freq, scaling_type


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 whatever the activation dtype, as the reference does.
        if x.dtype == torch.float32:
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class KVCache:
    """Pre-allocated keys/values for every layer: [n_layers, B, n_kv_heads, max_len, head_dim].

    All rows of a batch advance together (prompts are left-padded), so one write position serves
    the whole batch and decoding allocates nothing per step.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, dtype=torch.float32, device="cpu"):
        shape = (config.n_layers, batch_size, config.n_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.pos = 0  # number of positions filled

    def reset(self):
        self.pos = 0


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.q_size = self.n_heads * self.head_dim
        self.kv_size = self.n_kv_heads * self.head_dim
        self.wqkv = nn.Linear(config.dim, self.q_size + 2 * self.kv_size, bias=False)
        self.wo = nn.Linear(self.q_size, config.dim, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, alibi=None):
        """alibi: (q column, k column) of positions.alibi_columns, ALiBi without a float mask."""
        B, T, _ = x.shape
        qkv = self.wqkv(x).view(B, T, self.n_heads + 2 * self.n_kv_heads, self.head_dim).transpose(1, 2)
        # Rotate q and k in one go: they are adjacent heads of the fused projection.
        qk = qkv[:, : self.n_heads + self.n_kv_heads]
        if cos is not None:
            qk = apply_rope(qk, cos, sin)
        q, k = qk[:, : self.n_heads], qk[:, self.n_heads:]
        v = qkv[:, self.n_heads + self.n_kv_heads:]
        if cache is not None:
            start, end = cache.pos, cache.pos + T
            cache.k[self.layer_id, :, :, start:end] = k
            cache.v[self.layer_id, :, :, start:end] = v
            k = cache.k[self.layer_id, :, :, :end]
            v = cache.v[self.layer_id, :, :, :end]
        gqa = self.n_kv_heads != self.n_heads
        scale = None
        if alibi is not None:
            # One more dimension carries the bias; v gets a zero column so that q, k and v keep one head
            # size (CPU's fused kernel needs it; the math fallback would be slower than the float mask).
            q = torch.cat([q, alibi[0].to(q.dtype).expand(B, -1, T, 1)], dim=-1)
            k = torch.cat([k, alibi[1].to(k.dtype).expand(B, k.shape[1], -1, 1)], dim=-1)
            v = F.pad(v, (0, 1))
            scale = self.head_dim ** -0.5
        if mask is None:
            # No padding and no cached prefix: plain causal attention (fast path).
            out = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=gqa, scale=scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa, scale=scale)
        if alibi is not None:
            out = out[..., : self.head_dim]
        return self.wo(out.transpose(1, 2).reshape(B, T, self.q_size))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), with w1 and w3 fused as w13."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.hidden = config.hidden_dim
        self.w13 = nn.Linear(config.dim, 2 * self.hidden, bias=False)
        self.w2 = nn.Linear(self.hidden, config.dim, bias=False)

    def forward(self, x):
        gate, up = self.w13(x).split(self.hidden, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, layer_id)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x, cos, sin, mask, cache, alibi=None):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache, alibi)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self._rope_len = 0
        self.reset_rope()
        self.apply(self._init_weights)
        # GPT-2's residual scaling: projections that write into the residual stream start smaller.
        for name, p in self.named_parameters():
            if name.endswith(("wo.weight", "w2.weight")) and p.device.type != "meta":
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * config.n_layers) ** 0.5)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)) and module.weight.device.type != "meta":
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ---------------------------------------------------------------- rope
    def reset_rope(self, length: int | None = None):
        """(Re)build the cos/sin tables, e.g. after changing config.rope_theta or rope_scaling."""
        c = self.config
        device = self.tok_embeddings.weight.device
        if device.type == "meta":
            device = "cpu"
        self.alibi = c.position_encoding == "alibi"
        if self.alibi:
            self.register_buffer("alibi_slopes", alibi_slopes(c.n_heads).to(device), persistent=False)
        self.dynamic_rope = scaling_type(c.rope_scaling) == "dynamic"
        inv_freq, factor = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling, max_seq_len=c.max_seq_len)
        length = max(length or 0, c.max_seq_len)
        if self.dynamic_rope:  # the table holds the trained window only; beyond it, per-length tables
            length = c.max_seq_len
        cos, sin = rope_cos_sin(inv_freq, length, factor)
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)
        self._rope_len = length

    def _rope_for(self, positions: torch.Tensor | None, start: int, T: int):
        if self.alibi:
            return None, None
        need = (int(positions.max()) + 1) if positions is not None else start + T
        if need > self._rope_len:
            if self.dynamic_rope:
                # Dynamic NTK: the base grows with the sequence, so the table depends on its length.
                c = self.config
                inv_freq, factor = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling, seq_len=need,
                                                 max_seq_len=c.max_seq_len)
                cos, sin = rope_cos_sin(inv_freq.to(self.rope_cos.device), need, factor)
                if positions is None:
                    return cos[start:start + T][None, None], sin[start:start + T][None, None]
                return cos[positions][:, None], sin[positions][:, None]
            self.reset_rope(max(need, 2 * self._rope_len))  # beyond max_seq_len: extend rather than fail
        if positions is None:
            return self.rope_cos[start:start + T][None, None], self.rope_sin[start:start + T][None, None]
        return self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]

    # ------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] (or [B, 1, vocab] with last_only).

        attention_mask: [B, T_total] with 1 for real tokens and 0 for (left) padding, where T_total
        counts cached positions plus the new ones. Without position_ids, positions follow the mask
        (a left-padded row starts at 0 at its first real token), so padding changes no logits.
        """
        B, T = input_ids.shape
        start = cache.pos if cache is not None else 0
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions; {start + T} needed")
        mask = None
        if attention_mask is not None:
            attention_mask = attention_mask.bool()
            if position_ids is None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, start:start + T]
            if not bool(attention_mask.all()):
                mask = _padding_causal_mask(attention_mask, start, T)
        if mask is None and cache is not None and start > 0 and T > 1:
            # A multi-token step after a cached prefix: causal with an offset.
            mask = _padding_causal_mask(torch.ones(B, start + T, dtype=torch.bool, device=input_ids.device), start, T)
        cos, sin = self._rope_for(position_ids, start, T)
        alibi = None
        if self.alibi:
            if T > 1 and self._full_precision(input_ids.device):
                # Many queries (training, a prefill, a perplexity window): the bias as one more q/k dimension,
                # so attention stays causal (or boolean-masked) and no [H, T, S] float mask is built.
                alibi = alibi_columns(self.alibi_slopes, self._key_positions(attention_mask, start + T,
                                                                             input_ids.device), self.config.head_dim)
            else:  # one query per row (decoding), or half precision where the column would round badly
                mask = self._alibi_mask(attention_mask, mask, B, start, T, input_ids.device)
        h = self.tok_embeddings(input_ids)
        for layer in self.layers:
            h = layer(h, cos, sin, mask, cache, alibi)
        if cache is not None:
            cache.pos = start + T
        if last_only:
            h = h[:, -1:]
        return self.output(self.norm(h)).float()

    def _full_precision(self, device) -> bool:
        """Attention runs in float32 or float64 (no bf16/fp16 weights, no autocast)."""
        return (self.tok_embeddings.weight.dtype in (torch.float32, torch.float64)
                and not torch.is_autocast_enabled(device.type))

    @staticmethod
    def _key_positions(attention_mask, total: int, device) -> torch.Tensor:
        """[B|1, total] positions of the keys: counted from each row's first real token under left padding."""
        if attention_mask is not None:
            return (attention_mask[:, :total].long().cumsum(-1) - 1).clamp(min=0)
        return torch.arange(total, device=device)[None]

    def _alibi_mask(self, attention_mask, bool_mask, B, start, T, device):
        """Float mask [B|1, H, T, start+T]: ALiBi's distance bias, −inf where attention is not allowed."""
        total = start + T
        k_pos = self._key_positions(attention_mask, total, device)
        if bool_mask is None:
            bool_mask = _padding_causal_mask(torch.ones(1, total, dtype=torch.bool, device=device), start, T)
        bias = alibi_bias(self.alibi_slopes, k_pos[:, start:], k_pos)
        return bias.masked_fill(~bool_mask, float("-inf"))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _padding_causal_mask(attention_mask: torch.Tensor, start: int, T: int) -> torch.Tensor:
    """Boolean [B, 1, T, start+T]: query t sees key j when j is real and j <= start+t.

    A padding query would see nothing and make softmax NaN, so it may always see itself;
    its output is never used.
    """
    total = start + T
    keys = attention_mask[:, :total]
    q_pos = torch.arange(start, total, device=keys.device)[:, None]
    k_pos = torch.arange(total, device=keys.device)[None, :]
    causal = k_pos <= q_pos
    mask = causal[None] & keys[:, None, :]
    mask = mask | (k_pos == q_pos)[None]
    return mask[:, None]

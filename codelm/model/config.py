"""Model shape: one dataclass, presets for the real Code Llama sizes and tiny CPU ones."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from codelm.errors import ConfigError
from codelm.model.positions import scaling_type


@dataclass
class ModelConfig:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None: multi-head attention (= n_heads)
    vocab_size: int = 32016
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    ffn_hidden_dim: int | None = None  # explicit FFN width; overrides multiple_of/ffn_dim_multiplier
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"type": "linear"|"dynamic"|"yarn", "factor": ...}; positions.py
    position_encoding: str = "rope"  # "rope" or "alibi" (no rotary; linear attention bias)
    max_seq_len: int = 4096
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int | None = None

    def __post_init__(self):
        for name in ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "max_seq_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"model config field '{name}' must be a positive integer, got {v!r}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("n_kv_heads", "ffn_hidden_dim"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ConfigError(f"model config field '{name}' must be a positive integer, got {v!r}")
        for name in ("norm_eps", "rope_theta", "ffn_dim_multiplier"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0
                                  or v == float("inf")):
                raise ConfigError(f"model config field '{name}' must be a positive number, got {v!r}")
        for name in ("bos_id", "eos_id", "pad_id"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ConfigError(f"model config field '{name}' must be a token id (an integer >= 0), got {v!r}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise ConfigError(f"model config field 'rope_scaling' must be a table, got {self.rope_scaling!r}")
        if self.dim % self.n_heads:
            raise ConfigError(f"model config: dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"model config: n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if self.position_encoding not in ("rope", "alibi"):
            raise ConfigError(f"model config: position_encoding must be 'rope' or 'alibi', got "
                              f"{self.position_encoding!r}")
        scaling_type(self.rope_scaling)  # validates type and factor
        if (self.dim // self.n_heads) % 2:
            raise ConfigError(f"model config: head dim {self.dim // self.n_heads} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU width: 2/3 of 4*dim, times the multiplier, rounded up to multiple_of (Llama 2's rule)."""
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    def num_params(self) -> int:
        d, h, hd = self.dim, self.hidden_dim, self.head_dim
        attn = d * (self.n_heads * hd) + 2 * d * (self.n_kv_heads * hd) + (self.n_heads * hd) * d
        layer = attn + 3 * d * h + 2 * d
        return 2 * self.vocab_size * d + self.n_layers * layer + d

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown model config key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset '{name}'; choose one of {sorted(PRESETS)}")
        d = dict(PRESETS[name])
        d.update(overrides)
        return cls.from_dict(d, source=f"preset {name}")


# Real shapes (reference doc §6.4/§7.3). rope_theta 1e6 and 16k positions after LCFT;
# 34B has no FIM tokens (vocab 32000); 70B-Instruct kept θ=1e4 and 4k.
PRESETS: dict[str, dict] = {
    "codellama-7b": dict(dim=4096, n_layers=32, n_heads=32, vocab_size=32016, rope_theta=1e6, max_seq_len=16384),
    "codellama-13b": dict(dim=5120, n_layers=40, n_heads=40, vocab_size=32016, rope_theta=1e6, max_seq_len=16384),
    "codellama-34b": dict(dim=8192, n_layers=48, n_heads=64, n_kv_heads=8, vocab_size=32000, rope_theta=1e6,
                          max_seq_len=16384),
    "codellama-70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=32016,
                          ffn_dim_multiplier=1.3, multiple_of=4096, rope_theta=1e4, max_seq_len=4096),
    # CPU sizes. vocab is a placeholder: callers set it from their tokenizer.
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32, max_seq_len=512),
    "small": dict(dim=256, n_layers=8, n_heads=8, vocab_size=32016, multiple_of=32, max_seq_len=2048),  # ~15M
    "base110m": dict(dim=768, n_layers=12, n_heads=12, vocab_size=32016, multiple_of=256, max_seq_len=2048),
}

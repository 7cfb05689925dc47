"""`codelm info`: a preset's or checkpoint's shape and parameter count, without building the weights."""
from __future__ import annotations

import json

from codelm.model.config import ModelConfig
from codelm.model.checkpoint import read_config


def _describe(config: ModelConfig) -> dict:
    return {
        "parameters": config.num_params(),
        "parameters_human": _human(config.num_params()),
        "dim": config.dim, "n_layers": config.n_layers, "n_heads": config.n_heads, "n_kv_heads": config.n_kv_heads,
        "head_dim": config.head_dim, "ffn_hidden_dim": config.hidden_dim, "vocab_size": config.vocab_size,
        "rope_theta": config.rope_theta, "rope_scaling": config.rope_scaling, "max_seq_len": config.max_seq_len,
        "norm_eps": config.norm_eps,
    }


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def info_main(preset: str | None = None, model: str | None = None) -> int:
    if preset:
        config, name = ModelConfig.from_preset(preset), f"preset {preset}"
    else:
        config, name = read_config(model), model
    d = _describe(config)
    print(f"{name}: {d['parameters_human']} parameters ({d['parameters']:,})")
    print(json.dumps(d, indent=2))
    return 0

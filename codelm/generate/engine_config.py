"""The native engine's settings: one typed description the CLI declares its flags from.

Kept apart from codelm.generate.weights (which needs torch) so that building the CLI's parser, and
every command that never generates (`codelm score`, `--help`), does not import torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from codelm.errors import ConfigError

DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZE = ("none", "int8")
KERNELS = ("auto", "torch")


@dataclass(frozen=True)
class EngineConfig:
    """How the native engine runs a model (flags of complete, infill, eval, serve and chat)."""
    dtype: str = field(default="auto", metadata={
        "help": "compute dtype: auto (float32 on a CPU, the loaded dtype on a GPU), float32, bfloat16 (CPUs "
                "with bf16 units, else float32), float16 (GPU) (default: %(default)s)", "choices": DTYPES})
    quantize: str = field(default="none", metadata={
        "help": "weight format: none, or int8 (weight-only, per-channel scales; CPU) (default: %(default)s)",
        "choices": QUANTIZE})
    max_batch: int = field(default=8, metadata={
        "help": "rows decoded together (KV-cache slots of continuous batching) (default: %(default)s)",
        "kind": "positive_int"})
    kernel: str = field(default="auto", metadata={
        "help": "forward pass on a CPU: auto (C code compiled for this CPU at first use, for fp32 and int8 "
                "weights: decoding up to 256 rows, prompts up to 2048 tokens or 4x the model's width; torch "
                "where it cannot run), or torch (default: %(default)s)",
        "choices": KERNELS})

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.quantize not in QUANTIZE:
            raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {self.quantize!r}")
        if self.kernel not in KERNELS:
            raise ConfigError(f"--kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be >= 1, got {self.max_batch}")

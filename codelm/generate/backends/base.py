"""What every generation backend takes and returns: `Request`, `Completion`, the `Backend` protocol, and
the default device (kept apart from the package's __init__, which picks a backend by name, so that the
backends import these without importing their own chooser)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Protocol

import torch

from codelm.errors import ConfigError


@dataclass(frozen=True)
class Request:
    prompt: str  # the completion prompt, or the infilling prefix
    suffix: str | None = None  # set for infilling
    spm: bool = False  # infilling layout: suffix-prefix-middle instead of prefix-suffix-middle
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def infilling(self) -> bool:
        return self.suffix is not None

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one batch (everything but the texts and the seed)."""
        return (self.infilling, self.spm, self.max_new_tokens, self.temperature, self.top_p, self.stop)

    def cache_key(self, sample: int) -> str:
        data = json.dumps({**asdict(self), "stop": list(self.stop), "sample": sample}, sort_keys=True)
        return hashlib.sha256(data.encode("utf-8")).hexdigest()


@dataclass
class Completion:
    text: str
    finish_reason: str = "stop"  # "stop" (a stop token or string) or "length"
    tokens: int | None = None  # generated tokens, when the backend knows


class Backend(Protocol):
    name: str
    batch_size: int

    def identity(self) -> dict: ...

    def generate(self, requests: list[Request]) -> list[Completion]: ...


def default_device(device: str | None, dtype: str | None) -> tuple[str, str]:
    """CUDA with bfloat16 when a GPU is there, else CPU with float32 (bfloat16 matmuls crawl on CPUs)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = "float32" if device == "cpu" else "bfloat16"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return device, dtype

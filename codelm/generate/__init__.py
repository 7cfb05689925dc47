"""Generation: completion and infilling (PSM/SPM) with codelm's native engine.

The names below load on first use (PEP 562 `__getattr__`), not at import: the CLI declares its engine
flags from `codelm.generate.engine_config`, and importing that submodule must not import torch (~1 s),
or every `codelm` command, `codelm score` and `--help` included, would pay for it.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "complete": "api", "infill": "api", "complete_batch": "api", "infill_batch": "api",
    "generate": "engine", "Engine": "engine", "Row": "engine",
    "SamplingParams": "sampler", "Generation": "sampler",
    "EngineConfig": "engine_config",
    "completion_tokens": "prompts", "infilling_tokens": "prompts", "split_fill": "prompts",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'codelm.generate' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"codelm.generate.{_WHERE[name]}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))

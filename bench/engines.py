"""Where the benchmarks find engines built once into their own venvs under the cache.

This is the locating half only: `ensure(name)` returns a finished build's entry point (its READY marker
is written last, so a half-built folder is never used) or raises `EngineUnavailable` saying how to get
one. The builder that also compiles a missing engine lives beside it in the interop work (issue 16) and
takes this file's place with the same `engine_root()` and `ensure()`.
"""
from __future__ import annotations

import os
from pathlib import Path

VERSIONS = {"llama-cpp-python": "0.3.36"}
ENTRY = {"llama-cpp-python": "bin/python"}


class EngineUnavailable(RuntimeError):
    """An engine could not be found; the message is the reason, in one line."""


def engine_root() -> Path:
    """`$XDG_CACHE_HOME/codelm/engines` (XDG_CACHE_HOME defaults to ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "codelm" / "engines"


def ensure(name: str) -> Path:
    if name not in VERSIONS:
        raise EngineUnavailable(f"unknown engine {name!r}; known: {', '.join(VERSIONS)}")
    folder = engine_root() / f"{name}-{VERSIONS[name]}"
    marker = folder / "READY"
    if marker.is_file() and marker.read_text().strip() == VERSIONS[name] and (folder / ENTRY[name]).exists():
        return folder / ENTRY[name]
    raise EngineUnavailable(f"no finished build of {name} {VERSIONS[name]} in {folder} (no READY marker)")

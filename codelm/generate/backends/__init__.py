"""Generation backends for evaluation runs, and the cache that lets a killed run resume.

A backend turns `Request`s (a completion prompt, or an infilling prefix + suffix) into
`Completion`s. Three exist:

  native  codelm's own engine on a checkpoint `codelm.load` opens (native.py)
  hf      transformers' `generate` on any causal-LM directory (hf.py)
  openai  any OpenAI-compatible server: vLLM, llama.cpp, Ollama, `codelm serve` (openai.py)

`generate_all` runs requests through a backend (all at once through the native engine's continuous
batching, in batches elsewhere), writing each finished generation to a `GenerationCache` (append-only
JSONL) as soon as it is done, so a run killed halfway is
resumed without generating any sample twice.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

from tqdm import tqdm

from codelm.errors import CodelmError, ConfigError, DataError
from codelm.files import AppendLog
from codelm.generate.backends.base import Backend, Completion, Request, default_device  # noqa: F401
from codelm.generate.backends.hf import HFBackend
from codelm.generate.backends.native import NativeBackend
from codelm.generate.backends.openai import OpenAIBackend
from codelm.generate.stops import cut_at_stop  # noqa: F401 - the backends' stop cut

BACKENDS = ("native", "hf", "openai")



# ----------------------------------------------------------------------------- the cache
class GenerationCache:
    """Append-only JSONL (codelm.files.AppendLog): line 1 names the run (backend identity), then one line
    per generation. A line cut short by a crash is ignored when the cache is read back."""

    def __init__(self, path: str | os.PathLike, header: dict):
        self.log = AppendLog(path, {"codelm_generation_cache": 1, **header}, "generation cache",
                             other_run="was written by a different backend or model")
        self.path, self.header = self.log.path, self.log.header
        self.entries: dict[str, dict] = {}

    def open(self) -> "GenerationCache":
        try:
            for entry in self.log.read() or []:
                if "key" in entry:
                    self.entries[entry["key"]] = entry
        except DataError as e:
            raise CodelmError(str(e)) from None
        self.log.open(self.entries.values())
        return self

    def get(self, key: str) -> Completion | None:
        e = self.entries.get(key)
        return None if e is None else Completion(e["text"], e.get("finish_reason", "stop"), e.get("tokens"))

    def put(self, key: str, completion: Completion) -> None:
        entry = {"key": key, "text": completion.text, "finish_reason": completion.finish_reason,
                 "tokens": completion.tokens}
        self.entries[key] = entry
        self.log.append(entry)

    def close(self) -> None:
        self.log.close()


@dataclass
class GenerationStats:
    generated: int = 0
    from_cache: int = 0
    batches: int = 0
    tokens: int = 0
    seconds: float = 0.0
    batch_seconds: list = field(default_factory=list)


def generate_all(backend: Backend, items: list[tuple[Request, int]], cache: GenerationCache | None = None,
                 progress: bool = True, on_batch: Callable[[int], None] | None = None
                 ) -> tuple[list[Completion], GenerationStats]:
    """Completions for (request, sample index) pairs, in order; cached ones are not generated again."""
    stats = GenerationStats()
    results: list[Completion | None] = [None] * len(items)
    todo: dict[tuple, list[int]] = {}
    for i, (request, sample) in enumerate(items):
        hit = cache.get(request.cache_key(sample)) if cache is not None else None
        if hit is not None:
            results[i] = hit
            stats.from_cache += 1
        else:
            todo.setdefault(request.batch_key(), []).append(i)
    bar = tqdm(total=sum(len(v) for v in todo.values()), desc=f"generating ({backend.name})", unit="sample",
               disable=not progress)
    started = time.monotonic()
    if progress and hasattr(backend, "on_step"):
        # A batch can take minutes on a CPU: show the tokens of the batch in flight, not only finished batches.
        step_state = {"tokens": 0, "shown": 0.0}

        def on_step(rows_left):
            step_state["tokens"] += rows_left
            now = time.monotonic()
            if now - step_state["shown"] > 0.5:
                step_state["shown"] = now
                bar.set_postfix_str(f"batch {stats.batches + 1}: {step_state['tokens']} tokens", refresh=True)

        backend.on_step = on_step
    def _record(i: int, out: Completion) -> None:
        results[i] = out
        stats.generated += 1
        stats.tokens += out.tokens or 0
        if cache is not None:
            cache.put(items[i][0].cache_key(items[i][1]), out)

    if hasattr(backend, "generate_each"):
        # Continuous batching: every request at once; each is cached the moment it finishes.
        flat = [i for indices in todo.values() for i in indices]

        def done(j: int, out: Completion) -> None:
            _record(flat[j], out)
            bar.update(1)
            if on_batch is not None:
                on_batch(stats.generated)

        if flat:
            t0 = time.monotonic()
            backend.generate_each([items[i][0] for i in flat], done)
            stats.batch_seconds.append(round(time.monotonic() - t0, 4))
            stats.batches += 1
        todo = {}

    for indices in todo.values():
        for start in range(0, len(indices), max(1, backend.batch_size)):
            batch = indices[start:start + backend.batch_size]
            t0 = time.monotonic()
            outs = backend.generate([items[i][0] for i in batch])
            stats.batch_seconds.append(round(time.monotonic() - t0, 4))
            if len(outs) != len(batch):
                raise CodelmError(f"backend {backend.name} returned {len(outs)} generations for {len(batch)} requests")
            for i, out in zip(batch, outs):
                _record(i, out)
            stats.batches += 1
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(stats.generated)
    bar.close()
    if progress and hasattr(backend, "on_step"):
        backend.on_step = None
    stats.seconds = round(time.monotonic() - started, 3)
    return results, stats


def make_backend(kind: str, location: str, batch_size: int | None = None, device: str | None = None,
                 dtype: str | None = None, quantize: str = "none", **options) -> Backend:
    """A backend by name: `location` is a checkpoint directory (native, hf) or a server URL (openai);
    `quantize` (none, int8) is the native engine's weight format; `options` go to the openai backend
    (model, api_key, chat, infill, tokenizer, concurrency)."""
    if quantize != "none" and kind != "native":
        raise ConfigError(f"--quantize {quantize} is a native-backend option, not {kind}'s")
    if kind == "native":
        return NativeBackend.from_path(location, batch_size=batch_size or 8, device=device, dtype=dtype,
                                       quantize=quantize)
    if kind == "hf":
        return HFBackend(location, batch_size=batch_size or 8, device=device, dtype=dtype)
    if kind == "openai":
        return OpenAIBackend(location, batch_size=batch_size or 16, **options)
    raise ConfigError(f"unknown backend {kind!r}; valid: {', '.join(BACKENDS)}")


__all__ = ["Request", "Completion", "Backend", "GenerationCache", "GenerationStats", "generate_all",
           "make_backend", "cut_at_stop", "BACKENDS"]

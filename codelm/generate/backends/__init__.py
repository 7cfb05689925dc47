"""Generation backends for evaluation runs, and the cache that lets a killed run resume.

A backend turns `Request`s (a completion prompt, or an infilling prefix + suffix) into
`Completion`s. Three exist:

  native  codelm's own engine on a checkpoint `codelm.load` opens (native.py)
  hf      transformers' `generate` on any causal-LM directory (hf.py)
  openai  any OpenAI-compatible server: vLLM, llama.cpp, Ollama, `codelm serve` (openai.py)

`generate_all` runs requests through a backend in batches, writing each finished generation to a
`GenerationCache` (append-only JSONL) as soon as its batch returns, so a run killed halfway is
resumed without generating any sample twice.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

from codelm.errors import CodelmError, ConfigError

BACKENDS = ("native", "hf", "openai")


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


def cut_at_stop(text: str, stops: Iterable[str]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    best = None
    for s in stops:
        if s:
            i = text.find(s)
            if i >= 0 and (best is None or i < best):
                best = i
    return (text, False) if best is None else (text[:best], True)


# ----------------------------------------------------------------------------- the cache
class GenerationCache:
    """Append-only JSONL: line 1 names the run (backend identity), then one line per generation.

    A line cut short by a crash is ignored when the cache is read back."""

    def __init__(self, path: str | os.PathLike, header: dict):
        self.path = Path(path)
        self.header = {"codelm_generation_cache": 1, **header}
        self.entries: dict[str, dict] = {}
        self._file = None

    def open(self) -> "GenerationCache":
        if self.path.exists():
            lines = self.path.read_text(encoding="utf-8", errors="replace").split("\n")
            try:
                header = json.loads(lines[0])
            except (json.JSONDecodeError, IndexError):
                raise CodelmError(f"{self.path}: not a codelm generation cache; delete it to start over") from None
            if header != self.header:
                raise CodelmError(f"{self.path} was written by a different backend or model ({header}); "
                                  "use another --out folder, or delete the cache to start over")
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # the torn last line of a killed run
        # Rewrite so that a torn last line is gone before anything is appended after it.
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.header) + "\n")
            for entry in self.entries.values():
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        return self

    def get(self, key: str) -> Completion | None:
        e = self.entries.get(key)
        return None if e is None else Completion(e["text"], e.get("finish_reason", "stop"), e.get("tokens"))

    def put(self, key: str, completion: Completion) -> None:
        entry = {"key": key, "text": completion.text, "finish_reason": completion.finish_reason,
                 "tokens": completion.tokens}
        self.entries[key] = entry
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()  # the OS has it: survives the process being killed

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


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
    import time

    from tqdm import tqdm

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
    for indices in todo.values():
        for start in range(0, len(indices), max(1, backend.batch_size)):
            batch = indices[start:start + backend.batch_size]
            t0 = time.monotonic()
            outs = backend.generate([items[i][0] for i in batch])
            stats.batch_seconds.append(round(time.monotonic() - t0, 4))
            if len(outs) != len(batch):
                raise CodelmError(f"backend {backend.name} returned {len(outs)} generations for {len(batch)} requests")
            for i, out in zip(batch, outs):
                results[i] = out
                stats.generated += 1
                stats.tokens += out.tokens or 0
                if cache is not None:
                    cache.put(items[i][0].cache_key(items[i][1]), out)
            stats.batches += 1
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(stats.generated)
    bar.close()
    if progress and hasattr(backend, "on_step"):
        backend.on_step = None
    stats.seconds = round(time.monotonic() - started, 3)
    return results, stats


def default_device(device: str | None, dtype: str | None) -> tuple[str, str]:
    """CUDA with bfloat16 when a GPU is there, else CPU with float32 (bfloat16 matmuls crawl on CPUs)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = "float32" if device == "cpu" else "bfloat16"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return device, dtype


def make_backend(kind: str, location: str, batch_size: int | None = None, device: str | None = None,
                 dtype: str | None = None, **options) -> Backend:
    """A backend by name: `location` is a checkpoint directory (native, hf) or a server URL (openai);
    `options` go to the openai backend (model, api_key, chat, infill, tokenizer, concurrency)."""
    if kind == "native":
        from codelm.generate.backends.native import NativeBackend

        return NativeBackend.from_path(location, batch_size=batch_size or 8, device=device, dtype=dtype)
    if kind == "hf":
        from codelm.generate.backends.hf import HFBackend

        return HFBackend(location, batch_size=batch_size or 8, device=device, dtype=dtype)
    if kind == "openai":
        from codelm.generate.backends.openai import OpenAIBackend

        return OpenAIBackend(location, batch_size=batch_size or 16, **options)
    raise ConfigError(f"unknown backend {kind!r}; valid: {', '.join(BACKENDS)}")


__all__ = ["Request", "Completion", "Backend", "GenerationCache", "GenerationStats", "generate_all",
           "make_backend", "cut_at_stop", "BACKENDS"]

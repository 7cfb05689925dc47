"""The native backend: codelm's own engine (codelm.generate.engine, continuous batching) on a checkpoint
`codelm.load` opens. Every request keeps its own sampling settings and seed, so the samples do not
depend on how requests are grouped: `generate_all` hands them all over at once and caches each one
the moment it finishes."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from codelm.errors import warn
from codelm.generate.backends.base import Completion, Request
from codelm.generate.engine import Engine, Row, row_limits
from codelm.generate.prompts import completion_tokens, infilling_tokens
from codelm.generate.sampler import SamplingParams
from codelm.generate.weights import EngineConfig, load_for_engine


class NativeBackend:
    name = "native"

    def __init__(self, model, tokenizer, batch_size: int = 8, source: str = "<in memory>",
                 engine: EngineConfig | None = None):
        self.model, self.tokenizer, self.batch_size, self.source = model, tokenizer, batch_size, source
        self.engine = replace(engine or EngineConfig(), max_batch=batch_size)
        self._warned_context = False
        self.on_step = None  # set by generate_all: called after every decoding step (progress)

    @classmethod
    def from_path(cls, path, batch_size: int = 8, device: str | None = None, dtype: str | None = None,
                  quantize: str = "none") -> "NativeBackend":
        """dtype: float32/bfloat16/float16 (or None: float32 on a CPU, bf16 on a GPU); bf16 on a CPU runs
        the engine's bf16 path (fp32 where the CPU has no bf16 units); quantize: none or int8."""
        engine = EngineConfig(dtype=dtype or "auto", quantize=quantize, max_batch=batch_size)
        loaded = load_for_engine(path, engine, device)
        return cls(loaded.model, loaded.tokenizer, batch_size=batch_size, source=str(Path(path).resolve()),
                   engine=engine)

    def identity(self) -> dict:
        ident = {"backend": self.name, "model": self.source}
        if self.engine.quantize != "none" or self.engine.dtype not in ("auto", "float32"):
            ident["weights"] = self.engine.quantize if self.engine.quantize != "none" else self.engine.dtype
        return ident

    def _row(self, r: Request, context: int | None, on_done) -> Row:
        tok = self.tokenizer
        if r.infilling:
            prompt, stop_ids = infilling_tokens(tok, r.prompt, r.suffix, spm=r.spm), {tok.eot_id, tok.eos_id}
        else:
            prompt, stop_ids = completion_tokens(tok, r.prompt), {tok.eos_id}
        params = SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                seed=r.seed, stop=tuple(r.stop))
        limit = row_limits([prompt], r.max_new_tokens, context)[0]
        return Row(prompt, params, frozenset(stop_ids), tok.decode_infilling, limit, seed=r.seed, on_done=on_done)

    def generate_each(self, requests: list[Request], on_done: Callable[[int, Completion], None]) -> None:
        """Generate every request with continuous batching; on_done(index, completion) as each finishes."""
        context = getattr(getattr(self.model, "config", None), "max_seq_len", None)  # None: no limit

        def finished(i: int):
            def call(row: Row) -> None:
                if row.error is None:
                    g = row.result
                    on_done(i, Completion(g.text, "length" if g.finish_reason == "length" else "stop", len(g.tokens)))
            return call

        rows = [self._row(r, context, finished(i)) for i, r in enumerate(requests)]
        if context is not None and not self._warned_context and any(
                len(row.prompt) + r.max_new_tokens > context for row, r in zip(rows, requests)):
            self._warned_context = True  # the same rule as `codelm complete`: cut at the context, said once
            warn("prompt + max new tokens exceeds this model's maximum context length of "
                 f"{context} tokens for some prompts; those generations stop at the context")
        Engine(self.model, self.engine).run(rows, self.on_step)

    def generate(self, requests: list[Request]) -> list[Completion]:
        out: list[Completion | None] = [None] * len(requests)

        def put(i, completion):
            out[i] = completion

        self.generate_each(requests, put)
        return out

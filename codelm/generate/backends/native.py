"""The native backend: codelm's own batched engine (codelm.generate) on a checkpoint `codelm.load` opens."""
from __future__ import annotations

from pathlib import Path

from codelm.errors import TokenizerError
from codelm.generate.backends.base import Completion, Request, default_device


class NativeBackend:
    name = "native"

    def __init__(self, model, tokenizer, batch_size: int = 8, source: str = "<in memory>"):
        self.model, self.tokenizer, self.batch_size, self.source = model, tokenizer, batch_size, source
        self._warned_context = False
        self.on_step = None  # set by generate_all: called after every decoding step (progress)

    @classmethod
    def from_path(cls, path, batch_size: int = 8, device: str | None = None, dtype: str | None = None
                  ) -> "NativeBackend":
        from codelm.model.checkpoint import load

        device, dtype = default_device(device, dtype)
        loaded = load(path, dtype=dtype, device=device)
        if loaded.tokenizer is None:
            raise TokenizerError(f"{path}: no tokenizer.json or tokenizer.model beside the checkpoint")
        return cls(loaded.model, loaded.tokenizer, batch_size=batch_size, source=str(Path(path).resolve()))

    def identity(self) -> dict:
        return {"backend": self.name, "model": self.source}

    def generate(self, requests: list[Request]) -> list[Completion]:
        from codelm.generate import complete_batch, infill_batch

        first = requests[0]
        # One batch shares its sampling settings (generate_all groups by Request.batch_key); the seed
        # of the batch is its first request's, so sampled samples stay distinct across batches.
        context = getattr(getattr(self.model, "config", None), "max_seq_len", None)  # None: no limit
        kw = dict(max_new_tokens=first.max_new_tokens, temperature=first.temperature, top_p=first.top_p,
                  seed=first.seed, stop=list(first.stop), max_len=context,
                  on_step=self.on_step)
        if first.infilling:
            gens = infill_batch(self.model, self.tokenizer, [(r.prompt, r.suffix) for r in requests],
                                spm=first.spm, **kw)
        else:
            gens = complete_batch(self.model, self.tokenizer, [r.prompt for r in requests], **kw)
        if context is not None and not self._warned_context and any(g.prompt_tokens + first.max_new_tokens > context for g in gens):
            from codelm.errors import warn

            self._warned_context = True  # the same rule as `codelm complete`: cut at the context, said once
            warn(f"prompt + max new tokens ({first.max_new_tokens}) exceeds this model's maximum context length "
                 f"of {context} tokens for some prompts; those generations stop at the context")
        return [Completion(g.text, "length" if g.finish_reason == "length" else "stop", len(g.tokens)) for g in gens]

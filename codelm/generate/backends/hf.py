"""The `hf` backend: transformers' `generate` on any causal-LM directory.

Prompts are built as token ids with codelm's own tokenizer loaded from the same directory
(`completion_tokens` / `infilling_tokens`, token-exact with Meta's reference) and fed to
`model.generate`: transformers 5's CodeLlamaTokenizer puts a stray space token before the suffix
of infilling prompts, so its `suffix=` / `<FILL_ME>` path is not used.
"""
from __future__ import annotations

from pathlib import Path

import torch

from codelm.errors import CheckpointError, TokenizerError
from codelm.generate.backends.base import Completion, Request, default_device
from codelm.generate.prompts import completion_tokens, infilling_tokens
from codelm.generate.stops import cut_at_stop
from codelm.tokenizer import Tokenizer


class HFBackend:
    name = "hf"

    def __init__(self, path, batch_size: int = 8, device: str | None = None, dtype: str | None = None):
        from transformers import AutoModelForCausalLM  # late: an optional dependency, seconds to import

        device, dtype = default_device(device, dtype)

        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise CheckpointError(f"{self.path}: no config.json (the hf backend needs a Hugging Face model folder)")
        try:
            self.tokenizer = Tokenizer.load(self.path)
        except TokenizerError:
            raise
        except Exception as e:  # noqa: BLE001 - any load failure is the user's folder
            raise TokenizerError(f"{self.path}: cannot load the tokenizer ({e})") from None
        self.model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=getattr(torch, dtype))
        self.model.to(device).eval()
        self.device, self.batch_size = device, batch_size

    def identity(self) -> dict:
        return {"backend": self.name, "model": str(self.path.resolve())}

    def _prompt_ids(self, r: Request) -> list[int]:
        if r.infilling:
            return infilling_tokens(self.tokenizer, r.prompt, r.suffix, spm=r.spm)
        return completion_tokens(self.tokenizer, r.prompt)

    def generate(self, requests: list[Request]) -> list[Completion]:
        from transformers import StoppingCriteria, StoppingCriteriaList  # late: optional (see __init__)

        first, tok = requests[0], self.tokenizer
        prompts = [self._prompt_ids(r) for r in requests]
        width = max(len(p) for p in prompts)
        pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every row's next token lands in the same column
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        stop_ids = [tok.eot_id, tok.eos_id] if first.infilling else [tok.eos_id]
        stops = [s for s in first.stop if s]

        class StopStrings(StoppingCriteria):
            """Ends a row once its decoded continuation holds a stop string (cut afterwards)."""

            def __call__(self, input_ids, scores, **kwargs):
                done = [bool(cut_at_stop(tok.decode_infilling(_until(row[width:].tolist(), stop_ids)), stops)[1])
                        for row in input_ids]
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        kw = dict(max_new_tokens=first.max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad)
        if first.temperature > 0:
            kw.update(do_sample=True, temperature=first.temperature, top_p=first.top_p, top_k=0)
            if first.seed is not None:
                torch.manual_seed(first.seed)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if stops:
            kw["stopping_criteria"] = StoppingCriteriaList([StopStrings()])
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kw)
        results = []
        for row in out[:, width:].tolist():
            gen = _until(row, stop_ids)
            text, hit = cut_at_stop(tok.decode_infilling(gen), stops)
            ended = hit or len(gen) < len(row) and row[len(gen)] in stop_ids
            results.append(Completion(text, "stop" if ended else "length", len(gen)))
        return results


def _until(ids: list[int], stop_ids) -> list[int]:
    for i, t in enumerate(ids):
        if t in stop_ids:
            return ids[:i]
    return ids

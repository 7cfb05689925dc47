"""Completion and infilling of text prompts with the native engine (re-exported by codelm.generate)."""
from __future__ import annotations

from codelm.generate.engine import generate
from codelm.generate.prompts import completion_tokens, infilling_tokens
from codelm.generate.sampler import Generation, SamplingParams


def _params(max_new_tokens, temperature, top_p, top_k, seed, stop) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                          seed=seed, stop=tuple(stop or ()))


def complete_batch(model, tokenizer, prompts: list[str], max_new_tokens=128, temperature=0.0, top_p=1.0, top_k=0,
                   seed=None, stop=None, on_text=None, max_len=None, on_step=None, engine=None) -> list[Generation]:
    """Continue each prompt until EOS, a stop string, or max_new_tokens (or, with max_len, until prompt
    and continuation fill max_len tokens)."""
    toks = [completion_tokens(tokenizer, p) for p in prompts]
    return generate(model, toks, _params(max_new_tokens, temperature, top_p, top_k, seed, stop),
                    stop_ids={tokenizer.eos_id}, decode=tokenizer.decode_infilling, on_text=on_text,
                    max_len=max_len, on_step=on_step, engine=engine)


def infill_batch(model, tokenizer, pairs: list[tuple[str, str]], spm=False, max_new_tokens=128, temperature=0.0,
                 top_p=1.0, top_k=0, seed=None, stop=None, on_text=None, max_len=None, on_step=None, engine=None
                 ) -> list[Generation]:
    """Fill the middle of each (prefix, suffix); stops at EOT (the reference's stop token) or EOS."""
    toks = [infilling_tokens(tokenizer, pre, suf, spm=spm) for pre, suf in pairs]
    return generate(model, toks, _params(max_new_tokens, temperature, top_p, top_k, seed, stop),
                    stop_ids={tokenizer.eot_id, tokenizer.eos_id}, decode=tokenizer.decode_infilling,
                    on_text=on_text, max_len=max_len, on_step=on_step, engine=engine)


def complete(model, tokenizer, prompt: str, **kw) -> str:
    return complete_batch(model, tokenizer, [prompt], **kw)[0].text


def infill(model, tokenizer, prefix: str, suffix: str, spm: bool = False, **kw) -> str:
    return infill_batch(model, tokenizer, [(prefix, suffix)], spm=spm, **kw)[0].text

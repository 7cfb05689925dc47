"""Batched sampling with a static KV cache: greedy, temperature, top-k, top-p, stop tokens and stop strings.

Prompts are left-padded so that every row writes the same cache slot at each step; padding changes no
logits (positions follow the attention mask). Stop strings are matched on decoded text, so a stop
sequence split across several tokens is still caught, and the output is cut where it begins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from codelm.model.llama import KVCache, Transformer
from codelm.generate.stops import find_stop


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop: Sequence[str] = ()
    compile: bool = False  # torch.compile the decode step (static shapes: compiled once per batch shape)

    def __post_init__(self):
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")


@dataclass
class Generation:
    tokens: list[int]  # generated ids (stop token excluded; cut at a stop string)
    text: str  # decoded continuation, cut before a stop string
    finish_reason: str  # "stop_token", "stop_string" or "length"
    stop_hit: str | None = None
    prompt_tokens: int = 0


def top_p_filter(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Reference semantics: drop tokens whose *preceding* cumulative mass already exceeds p; renormalise.

    probs: [..., V]. The most likely token always survives.
    """
    if p >= 1.0:
        return probs
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    cum = sorted_p.cumsum(dim=-1)
    sorted_p = sorted_p.masked_fill(cum - sorted_p > p, 0.0)
    out = torch.zeros_like(probs).scatter_(-1, idx, sorted_p)
    return out / out.sum(dim=-1, keepdim=True)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from logits [B, V]."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = top_k_filter(logits / params.temperature, params.top_k)
    probs = top_p_filter(torch.softmax(logits.float(), dim=-1), params.top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _stable_text(text: str) -> str:
    """Hold back a trailing partial UTF-8 character (decoded as U+FFFD) when streaming."""
    return text.rstrip("\ufffd")


@torch.inference_mode()
def generate(
    model: Transformer,
    prompts: list[list[int]],
    params: SamplingParams,
    stop_ids: set[int],
    decode: Callable[[list[int]], str],
    pad_id: int = 0,
    on_text: Callable[[int, str], None] | None = None,
    max_len: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Generate for a batch of token prompts. on_text(row, new_text) streams decoded text as it is fixed.

    max_len: when given (the model's context), a row stops with finish_reason "length" once its prompt
    plus its new tokens reach it, whatever max_new_tokens asks; None lets generation run past the
    context (RoPE extrapolation experiments). The KV cache is sized by what can actually be generated,
    and each decoding step attends only over the positions written so far, so a step's cost depends on
    the tokens written, not on the requested maximum. on_step(rows_still_generating) is called after
    every decoding step (progress display)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = model.tok_embeddings.weight.device
    B = len(prompts)
    plen = max(len(p) for p in prompts)
    limits = [params.max_new_tokens if max_len is None else max(0, min(params.max_new_tokens, max_len - len(p)))
              for p in prompts]
    steps = max(limits)
    total = plen + steps
    ids = torch.full((B, plen), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((B, total), dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        ids[i, plen - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, plen - len(p):] = True
    mask[:, plen:] = True  # generated positions are real in every row
    padded = any(len(p) != plen for p in prompts)
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.config, B, total, dtype=dtype, device=device)
    gen = None
    if params.seed is not None and params.temperature > 0:
        gen = torch.Generator(device=device).manual_seed(params.seed)
    elif params.temperature > 0:
        gen = None  # global RNG

    out_tokens: list[list[int]] = [[] for _ in range(B)]
    texts = [""] * B
    streamed = [0] * B
    done = [n == 0 for n in limits]
    results: list[Generation | None] = [None] * B
    stops = [s for s in params.stop if s]
    logits = model(ids, attention_mask=mask[:, :plen] if padded else None, cache=cache, last_only=True)[:, -1]
    if total > model._rope_len:
        model.reset_rope(total)
    step_fn = _decode_fn(model, params.compile)
    key_mask = mask[:, None, None, :].clone()
    key_mask[..., plen:] = False
    positions = torch.tensor([[len(p)] for p in prompts], dtype=torch.long, device=device)
    slot = torch.tensor([plen], dtype=torch.long, device=device)
    for step in range(steps):
        nxt = sample_next(logits, params, gen)
        nxt_list = nxt.tolist()
        for i in range(B):
            if done[i]:
                continue
            tok = nxt_list[i]
            if tok in stop_ids:
                done[i] = True
                results[i] = Generation(out_tokens[i], decode(out_tokens[i]), "stop_token", None, len(prompts[i]))
                continue
            out_tokens[i].append(tok)
            if stops or on_text is not None:
                texts[i] = decode(out_tokens[i])
                hit = find_stop(texts[i], stops) if stops else None
                if hit is not None:
                    done[i] = True
                    cut = texts[i][: hit[0]]
                    results[i] = Generation(_trim_tokens(out_tokens[i], cut, decode), cut, "stop_string", hit[1],
                                            len(prompts[i]))
                    if on_text is not None and len(cut) > streamed[i]:
                        on_text(i, cut[streamed[i]:])
                        streamed[i] = len(cut)
                    continue
                if on_text is not None:
                    # Keep back enough characters that a stop string being typed is never shown.
                    hold = max((len(s) for s in stops), default=1) - 1
                    stable = _stable_text(texts[i])
                    stable = stable[: max(streamed[i], len(stable) - hold)]
                    if len(stable) > streamed[i]:
                        on_text(i, stable[streamed[i]:])
                        streamed[i] = len(stable)
            if len(out_tokens[i]) >= limits[i]:
                done[i] = True  # its result ("length") is made below
        if on_step is not None:
            on_step(B - sum(done))
        if all(done) or step == steps - 1:
            break
        key_mask[..., plen + step] = True
        # Eager decoding attends over the slots written so far only; compiled decoding keeps static shapes.
        mask_now = key_mask if params.compile else key_mask[..., : plen + step + 1]
        logits = step_fn(nxt[:, None], slot, positions, mask_now, cache)
        slot += 1
        positions += 1
    for i in range(B):
        if results[i] is None:
            text = decode(out_tokens[i])
            results[i] = Generation(out_tokens[i], text, "length", None, len(prompts[i]))
        if on_text is not None and len(results[i].text) > streamed[i]:
            on_text(i, results[i].text[streamed[i]:])
    return results


def _decode_fn(model, compile: bool):
    if not compile:
        return model.decode_step
    fn = getattr(model, "_compiled_decode_step", None)
    if fn is None:
        fn = torch.compile(model.decode_step, dynamic=False)
        model._compiled_decode_step = fn
    return fn


def _trim_tokens(tokens: list[int], text: str, decode) -> list[int]:
    """The shortest token prefix whose text covers `text` (tokens up to the stop string)."""
    for n in range(len(tokens) + 1):
        if len(decode(tokens[:n])) >= len(text):
            return tokens[:n]
    return tokens

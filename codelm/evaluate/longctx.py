"""Long-context evaluation: perplexity by context length, key retrieval, and loss by position.

Perplexity by context length (Code Llama §3.3, Fig. 4a): held-out files long enough for the
longest window are read with windows of n tokens advancing by n/2; every token of a file is scored
exactly once, with between n/2 and n tokens of context (fewer in a file's first window). The same
tokens are scored at every length, so the numbers compare across lengths and across models.

Key retrieval (App. G.2): held-out code is concatenated up to the requested token count and, at a
relative position (0: the start, 1: just before the question), the paper's function is inserted:

    def my_function() -> int:
        return "Note that this function is used at the end"
        return <VALUE>

with VALUE a random two-digit number; the prompt ends with `assert my_function() == `. A prompt is
exactly `length` tokens (BOS included). The greedy continuation is read up to its first non-digit
and must equal VALUE exactly. The position sweep (as in "Lost in the middle", Liu et al. 2023)
is the same task at one length with the key moved from the start to the end.

Loss by position: mean token loss at each position of windows of one long length (e.g. 16L),
which shows where, inside a long context, a model trained on short ones breaks down.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from codelm.data.corpus import corpus_texts
from codelm.errors import ConfigError, DataError
from codelm.files import atomic_write, mark_output
from codelm.model.checkpoint import load
from codelm.model.llama import KVCache

KEY_FUNCTION = ('def {name}() -> int:\n    return "Note that this function is used at the end"\n'
                '    return {value}\n')
QUESTION = "assert {name}() == "
KEY_NAME = "my_function"
PAPER_POSITIONS = (0.0, 0.2, 0.4)                 # Table 17/18 columns
SWEEP_POSITIONS = (0.0, 0.25, 0.5, 0.75, 1.0)     # "lost in the middle"
_FIRST_NUMBER = re.compile(r"\s*(\d+)")


# ------------------------------------------------------------- held-out text
def held_out_texts(corpus: str | Path, split: str = "valid") -> list[str]:
    """The texts of a corpus folder's split (or of a JSONL file with "text"), in file order."""
    texts = [t for t in corpus_texts(corpus, split) if t.strip()]
    if not texts:
        raise DataError(f"{corpus}: the {split} split holds no text")
    return texts


def code_token_stream(texts: list[str], tokenizer, max_tokens: int | None = None) -> np.ndarray:
    """Files tokenized (no BOS/EOS) and concatenated with a blank line between them: key-retrieval filler."""
    sep = tokenizer.encode("\n\n")
    out: list[int] = []
    for text in texts:
        out.extend(tokenizer.encode(text))
        out.extend(sep)
        if max_tokens is not None and len(out) >= max_tokens:
            break
    return np.asarray(out[:max_tokens] if max_tokens else out, dtype=np.int64)


def long_documents(texts: list[str], tokenizer, min_tokens: int, max_tokens_each: int | None = None,
                   total_tokens: int | None = None) -> list[np.ndarray]:
    """Token arrays (BOS + file) of the files with at least min_tokens tokens, longest first, each cut at
    max_tokens_each, until total_tokens are gathered (the last one cut to fit, never below min_tokens)."""
    docs = []
    for text in texts:
        ids = [tokenizer.bos_id] + tokenizer.encode(text)
        if len(ids) >= min_tokens:
            docs.append(np.asarray(ids[:max_tokens_each] if max_tokens_each else ids, dtype=np.int64))
    docs.sort(key=len, reverse=True)
    if not docs:
        raise DataError(f"no held-out file has {min_tokens} tokens or more (the longest window); use a corpus "
                        "with longer files or shorter lengths")
    if total_tokens is None:
        return docs
    kept, have = [], 0
    for d in docs:
        if have >= total_tokens:
            break
        take = min(len(d), max(min_tokens, total_tokens - have))
        kept.append(d[:take])
        have += take
    return kept


# ----------------------------------------------------- perplexity by length
def _windows(n_tokens: int, length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored target) windows over a document; targets are positions 1..n_tokens-1."""
    out = []
    end = min(length, n_tokens)
    out.append((0, end, 1))
    while end < n_tokens:
        new_end = min(end + stride, n_tokens)
        out.append((max(0, new_end - length), new_end, end))
        end = new_end
    return out


@torch.no_grad()
def window_losses(model, docs: list[np.ndarray], length: int, stride: int | None = None,
                  batch_size: int = 4) -> tuple[float, int]:
    """(sum of token losses, tokens scored) over docs read with windows of `length` advancing by `stride`."""
    stride = stride or max(1, length // 2)
    jobs = [(d, b, e, s) for d in docs for b, e, s in _windows(len(d), length, stride)]
    # Windows of the same size run as one batch.
    jobs.sort(key=lambda j: j[2] - j[1])
    total, count = 0.0, 0
    i = 0
    while i < len(jobs):
        size = jobs[i][2] - jobs[i][1]
        group = [jobs[i]]
        while i + len(group) < len(jobs) and len(group) < batch_size and jobs[i + len(group)][2] - jobs[i + len(group)][1] == size:
            group.append(jobs[i + len(group)])
        i += len(group)
        x = torch.from_numpy(np.stack([d[b:e] for d, b, e, _ in group]))
        logits = model(x)
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(-1, x[:, 1:, None]).squeeze(-1)          # [B, size-1]: target at b+1+j
        for row, (_, b, e, s) in enumerate(group):
            scored = nll[row, s - b - 1:]
            total += float(scored.sum())
            count += scored.numel()
    return total, count


def perplexity_by_length(model, docs: list[np.ndarray], lengths: list[int], batch_size: int = 4,
                         progress: bool = False, desc: str = "perplexity") -> dict[int, dict]:
    """{length: {"loss", "ppl", "tokens"}}: the same tokens scored with each context length."""
    model.eval()
    out = {}
    for n in tqdm(lengths, desc=desc, disable=not progress, leave=False):
        if n < 2:
            raise ConfigError(f"context length must be at least 2, got {n}")
        s, c = window_losses(model, docs, n, batch_size=max(1, batch_size * max(1, 512 // n)))
        loss = s / max(c, 1)
        out[n] = {"loss": loss, "ppl": math.exp(loss), "tokens": c}
    return out


@torch.no_grad()
def loss_by_position(model, docs: list[np.ndarray], window: int, buckets: int = 32, max_windows: int = 8,
                     batch_size: int = 2) -> dict:
    """Mean token loss by position inside windows of `window` tokens (the first `window`+1 tokens of
    each long document): {"window", "edges", "loss", "windows"}; loss[k] covers targets in edges[k]..edges[k+1]."""
    rows = [d[:window + 1] for d in docs if len(d) >= window + 1][:max_windows]
    if not rows:
        raise DataError(f"no held-out document has {window + 1} tokens for a loss-by-position window")
    model.eval()
    sums = torch.zeros(window)
    for i in range(0, len(rows), batch_size):
        x = torch.from_numpy(np.stack(rows[i:i + batch_size]))
        logits = model(x[:, :-1])
        nll = F.cross_entropy(logits.transpose(1, 2).float(), x[:, 1:], reduction="none")
        sums += nll.sum(0)
    per_pos = (sums / len(rows)).numpy()
    edges = np.linspace(0, window, buckets + 1).astype(int)
    loss = [float(per_pos[a:b].mean()) for a, b in zip(edges, edges[1:])]
    return {"window": window, "edges": edges.tolist(), "loss": loss, "windows": len(rows)}


# ------------------------------------------------------------ key retrieval
@dataclass
class RetrievalExample:
    ids: list[int]        # the prompt, exactly `length` tokens (BOS first)
    value: int            # the two-digit number the key function returns
    length: int
    position: float       # relative position of the key function inside the filler (0 start, 1 end)
    key_start: int        # token index where the key function starts


def key_snippets(tokenizer, value: int, name: str = KEY_NAME) -> tuple[list[int], list[int]]:
    """(tokens of the key function, tokens of the question), each starting on a fresh line."""
    key = tokenizer.encode("\n" + KEY_FUNCTION.format(name=name, value=value) + "\n")
    question = tokenizer.encode("\n" + QUESTION.format(name=name))
    return key, question


def key_retrieval_examples(tokenizer, filler: np.ndarray, length: int, position: float, n: int,
                           seed: int = 0, name: str = KEY_NAME) -> list[RetrievalExample]:
    """n prompts of exactly `length` tokens: filler code from a random offset, the key function at
    `position` of the filler, and the question at the end."""
    if not 0.0 <= position <= 1.0:
        raise ConfigError(f"key position must be between 0 and 1, got {position}")
    rng = np.random.default_rng([seed, length, int(round(position * 1000))])
    examples = []
    for _ in range(n):
        value = int(rng.integers(10, 100))
        key, question = key_snippets(tokenizer, value, name)
        n_fill = length - 1 - len(key) - len(question)
        if n_fill < 0:
            raise ConfigError(f"key retrieval: length {length} is shorter than the key function and question "
                              f"({len(key) + len(question) + 1} tokens)")
        if len(filler) < n_fill + 1:
            raise DataError(f"key retrieval: {len(filler)} tokens of held-out code cannot fill a prompt of {length}")
        start = int(rng.integers(0, len(filler) - n_fill + 1))
        fill = filler[start:start + n_fill].tolist()
        cut = int(round(position * n_fill))
        ids = [tokenizer.bos_id] + fill[:cut] + key + fill[cut:] + question
        examples.append(RetrievalExample(ids, value, length, position, 1 + cut))
    return examples


def oracle_answer(prompt_text: str, name: str = KEY_NAME) -> str | None:
    """What a perfect reader answers: the last `return <digits>` of the named function's definition."""
    m = re.search(rf"def {re.escape(name)}\(\) -> int:\n((?:    .*\n)+)", prompt_text)
    if m is None:
        return None
    values = re.findall(r"^    return (\d+)$", m.group(1), flags=re.M)
    return values[-1] if values else None


def answer_of(text: str) -> str:
    """The number a continuation starts with ('' when it starts with something else)."""
    m = _FIRST_NUMBER.match(text)
    return m.group(1) if m else ""


@torch.no_grad()
def greedy_continuations(model, prompts: list[list[int]], tokenizer, max_new_tokens: int = 4) -> list[str]:
    """Greedy continuations of equal-length prompts (one prefill, then cached steps)."""
    x = torch.tensor(prompts, dtype=torch.long)
    B, T = x.shape
    cache = KVCache(model.config, B, T + max_new_tokens, dtype=model.tok_embeddings.weight.dtype)
    logits = model(x, cache=cache, last_only=True)
    new = []
    for step in range(max_new_tokens):
        tok = logits[:, -1].argmax(-1, keepdim=True)
        new.append(tok)
        if step + 1 < max_new_tokens:
            logits = model(tok, cache=cache, last_only=True)
    gen = torch.cat(new, dim=1).tolist()
    return [tokenizer.decode(g) for g in gen]


def key_retrieval_accuracy(model, tokenizer, examples: list[RetrievalExample], batch_size: int = 8,
                           max_new_tokens: int = 4) -> float:
    """Fraction of examples whose greedy answer is exactly the hidden value."""
    if not examples:
        raise ConfigError("key retrieval: no examples")
    model.eval()
    hits = 0
    by_len: dict[int, list[RetrievalExample]] = {}
    for e in examples:
        by_len.setdefault(len(e.ids), []).append(e)
    for group in by_len.values():
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            texts = greedy_continuations(model, [e.ids for e in chunk], tokenizer, max_new_tokens)
            hits += sum(answer_of(t) == str(e.value) for t, e in zip(texts, chunk))
    return hits / len(examples)


def retrieval_grid(model, tokenizer, filler: np.ndarray, lengths: list[int], positions: list[float], n: int,
                   seed: int = 0, batch_tokens: int = 16384, progress: bool = False, desc: str = "key retrieval") -> dict:
    """{"LENGTH@POSITION": accuracy} over every length and position, n examples each; prompts run in batches
    of about batch_tokens tokens (many short prompts at once, a few long ones)."""
    cells = [(length, p) for length in lengths for p in positions]
    out = {}
    for length, p in tqdm(cells, desc=desc, disable=not progress, leave=False):
        ex = key_retrieval_examples(tokenizer, filler, length, p, n, seed)
        out[cell_key(length, p)] = key_retrieval_accuracy(model, tokenizer, ex,
                                                          batch_size=max(1, batch_tokens // length))
    return out


def cell_key(length: int, position: float) -> str:
    return f"{length}@{position:g}"


# ---------------------------------------------------------------------- CLI
def parse_lengths(text: str | None, trained: int) -> list[int]:
    """'L/4,L,4L,16L' or '1024,4096' (L = the model's trained length) -> token counts."""
    if not text:
        return [trained // 4, trained // 2, trained, 2 * trained, 4 * trained, 8 * trained, 16 * trained]
    out = []
    for part in text.split(","):
        p = part.strip()
        try:
            if p.endswith("L") or "L/" in p:
                num, _, den = p.partition("/")
                mult = float(num[:-1] or 1) if num.endswith("L") else float(num)
                value = mult * trained / (float(den) if den else 1)
            else:
                value = float(p)
        except ValueError:
            raise ConfigError(f"--lengths: cannot read {p!r} (use token counts like 4096 or multiples like 4L, L/2)") from None
        if value < 2 or value != int(value):
            raise ConfigError(f"--lengths: {p!r} is not a whole number of tokens >= 2 (L = {trained})")
        out.append(int(value))
    return out


def parse_positions(text: str | None, default) -> list[float]:
    if not text:
        return list(default)
    try:
        out = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--positions: expected numbers between 0 and 1 separated by commas, got {text!r}") from None
    bad = [x for x in out if not 0.0 <= x <= 1.0]
    if bad:
        raise ConfigError(f"--positions: {bad[0]} is outside [0, 1]")
    return out


def longctx_main(*, model: str, corpus: str, split: str = "valid", benchmark: str = "all", lengths: str | None = None,
                 trained_length: int | None = None, positions: str | None = None, sweep_length: int | None = None,
                 examples: int = 64, eval_tokens: int = 65536, rope_theta: float | None = None, seed: int = 0,
                 threads: int | None = None, out: str | None = None) -> int:
    """`codelm lab longctx --model DIR --corpus DIR`: perplexity by length, key retrieval, position sweep
    (flags in codelm/cli.py; `lengths` and `positions` as typed there, e.g. 'L/4,L,4L' and '0,0.2,0.4')."""
    loaded = load(model, dtype=torch.float32)
    model_dir, model, tok = model, loaded.model.eval(), loaded.tokenizer
    if tok is None:
        raise ConfigError(f"{model_dir}: no tokenizer beside the model")
    if threads:
        torch.set_num_threads(threads)
    if rope_theta is not None:
        model.config.rope_theta = float(rope_theta)
        model.reset_rope()
    trained = trained_length or model.config.max_seq_len
    lengths = parse_lengths(lengths, trained)
    texts = held_out_texts(corpus, split)
    result = {"model": str(model_dir), "trained_length": trained, "rope_theta": model.config.rope_theta,
              "rope_scaling": model.config.rope_scaling, "position_encoding": model.config.position_encoding}
    want = benchmark
    if want in ("perplexity", "all"):
        docs = long_documents(texts, tok, max(lengths) + 1, total_tokens=eval_tokens)
        ppl = perplexity_by_length(model, docs, lengths, progress=True)
        result["perplexity"] = {str(k): v for k, v in ppl.items()}
        for n, v in ppl.items():
            print(f"perplexity at {n:>7} tokens: {v['ppl']:.3f} (loss {v['loss']:.4f}, {v['tokens']} tokens)")
    if want in ("key-retrieval", "all"):
        filler = code_token_stream(texts, tok)
        positions = parse_positions(positions, PAPER_POSITIONS)
        grid = retrieval_grid(model, tok, filler, lengths, positions, examples, seed, progress=True)
        sweep_len = sweep_length or lengths[-1]
        sweep = retrieval_grid(model, tok, filler, [sweep_len], list(SWEEP_POSITIONS), examples, seed,
                               progress=True, desc="position sweep")
        result["key_retrieval"] = {"examples_per_cell": examples, "grid": grid, "sweep": sweep}
        for k, v in {**grid, **sweep}.items():
            print(f"key retrieval {k:>14}: {v:.1%}")
    if out:
        path = Path(out)
        atomic_write(path, json.dumps(result, indent=1))
        mark_output(path, "longctx-results")
        print(f"written to {path}")
    return 0

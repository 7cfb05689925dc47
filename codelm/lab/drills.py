"""The length lab's retrieval drills: the key-retrieval task itself (the paper's `my_function` key and
question, codelm/evaluate/longctx.py) laid into training code, as {"prompt", "completion"} rows that the
instruct data source trains on the answer only (pretraining) or on the whole row (the fine-tunes)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from codelm.data.corpus import corpus_texts
from codelm.errors import ConfigError
from codelm.evaluate import longctx as lc
from codelm.files import atomic_write


def drill_tokens(tokenizer, fill: list[int], before: int, value: int) -> tuple[list[int], int]:
    """A retrieval drill's prompt tokens (no BOS): fill[:before], the paper's key function returning value,
    fill[before:], the question; and the key's distance, the tokens between the key's end and the question."""
    if not 0 <= before <= len(fill):
        raise ConfigError(f"lab: a drill's key cannot sit after token {before} of {len(fill)} filler tokens")
    key, question = lc.key_snippets(tokenizer, value)
    return fill[:before] + key + fill[before:] + question, len(fill) - before


def write_drills(tokenizer, code_dir: Path, dest: Path, seq_len: int, n: int, seed: int = 0) -> Path:
    """dest: JSONL of n retrieval drills, {"prompt", "completion"}, each at most seq_len tokens with BOS: the
    key-retrieval task itself (the paper's `my_function` key and question) with a random value, a random
    amount of training code (uniform up to what fits) split at a random point by the key, so that the key
    sits anywhere from 0 to almost seq_len tokens before the question; the completion is the value and a
    newline. The pretraining's drills are at most L long, the fine-tunes' as long as their rows."""
    if dest.is_file():
        return dest
    rng = np.random.default_rng([seed, 7])
    stream = lc.code_token_stream(list(corpus_texts(code_dir, "train")), tokenizer, max_tokens=400_000)
    rows = []
    for _ in range(n):
        value = int(rng.integers(10, 100))
        key, question = lc.key_snippets(tokenizer, value)
        answer = tokenizer.encode(f"{value}\n")
        room = seq_len - 1 - len(key) - len(question) - len(answer)
        if room < 0:
            raise ConfigError(f"lab: data.seq_len={seq_len} is too short for a retrieval drill "
                              f"({seq_len - room} tokens); use 128 or more")
        # Short distances from key to question are the most frequent, which is what lets a tiny model find
        # the skill at all (uniform distances up to L were not learned in the same number of steps).
        n_fill = int(rng.integers(0, room + 1))
        before = int(rng.integers(0, n_fill + 1))
        start = int(rng.integers(0, len(stream) - n_fill))
        ids, _ = drill_tokens(tokenizer, stream[start:start + n_fill].tolist(), before, value)
        rows.append(json.dumps({"prompt": tokenizer.decode(ids), "completion": f"{value}\n"}) + "\n")
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, "".join(rows))
    return dest

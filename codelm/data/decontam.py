"""Decontamination: word n-grams of every benchmark text (HumanEval, MBPP, their EvalPlus versions, the
infilling sets, MultiPL-E's prompts), so that `codelm corpus` drops training files that share too many
of them. Benchmarks are read through codelm.benchdata, each file checked against its pinned sum."""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from codelm.benchdata.files import multipl_e_files
from codelm.benchdata.problems import load_problems
from codelm.files import iter_jsonl

WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DECONTAM_BENCHMARKS = ["humaneval", "humaneval+", "mbpp", "mbpp+",
                       "humaneval-infilling-single-line", "humaneval-infilling-multi-line",
                       "humaneval-infilling-random-span", "humaneval-infilling-random-span-light"]


def _word_ngrams(text: str, n: int) -> set[int]:
    words = WORD.findall(text)
    return {hash(tuple(words[i:i + n])) for i in range(len(words) - n + 1)}


@dataclass
class BenchmarkIndex:
    """Word n-grams of benchmark texts: n-gram hash -> indexes of the texts holding it."""
    n: int
    labels: list[str]          # "benchmark:task_id:part" per text
    sizes: list[int]           # distinct n-grams per text
    postings: dict[int, list[int]]
    benchmarks: list[str]      # those that were loaded
    missing: list[str]         # those that could not be

    def matches(self, text: str, min_matches: int, min_fraction: float) -> list[dict]:
        hits: Counter = Counter()
        for g in _word_ngrams(text, self.n):
            for t in self.postings.get(g, ()):
                hits[t] += 1
        found = []
        for t, c in hits.items():
            if c >= min_matches and c >= min_fraction * self.sizes[t]:
                found.append({"text": self.labels[t], "shared": c, "of": self.sizes[t]})
        return sorted(found, key=lambda h: (-h["shared"] / h["of"], h["text"]))


def benchmark_texts(problem: dict) -> dict[str, str]:
    """The texts of one problem that must not be trained on: prompt, solution, and both together."""
    prompt = problem.get("prompt") or ""
    solution = problem.get("canonical_solution") or ""
    suffix = problem.get("suffix") or ""
    texts = {"prompt": prompt, "solution": solution, "program": prompt + solution + suffix}
    return {k: v for k, v in texts.items() if v.strip()}


_INDEX_CACHE: dict[tuple, BenchmarkIndex] = {}


def build_benchmark_index(data_dir: str | None, n: int,
                          names: list[str] | None = None) -> BenchmarkIndex:
    """The n-gram index of every benchmark text (cached per process: it takes seconds to build)."""
    where = data_dir or os.environ.get("CODELM_DATA_DIR")
    key = (where, fingerprint_data_dir(where), n, tuple(names or DECONTAM_BENCHMARKS))
    if key not in _INDEX_CACHE:
        _INDEX_CACHE.clear()
        _INDEX_CACHE[key] = _build_benchmark_index(data_dir, n, names)
    return _INDEX_CACHE[key]


def _build_benchmark_index(data_dir: str | None, n: int, names: list[str] | None) -> BenchmarkIndex:
    labels: list[str] = []
    sizes: list[int] = []
    postings: dict[int, list[int]] = defaultdict(list)
    seen_texts: set[str] = set()
    loaded, missing = [], []
    for name in names or DECONTAM_BENCHMARKS:
        try:
            problems = load_problems(name, data_dir=data_dir)
        except Exception as e:  # a missing benchmark is reported, the others still count
            missing.append(f"{name} ({e})")
            continue
        loaded.append(name)
        for prob in problems:
            for part, text in benchmark_texts(prob).items():
                if text in seen_texts:      # the infilling sets repeat HumanEval's programs
                    continue
                seen_texts.add(text)
                grams = _word_ngrams(text, n)
                if not grams:
                    continue
                idx = len(labels)
                labels.append(f"{name}:{prob.get('task_id')}:{part}")
                sizes.append(len(grams))
                for g in grams:
                    postings[g].append(idx)
    # MultiPL-E (evaluation only, by its licence) has prompts in 20 languages, no solutions. Each file is
    # checked against its pinned sum; a file of the folder with no pinned sum is not read, and said so.
    translated, unknown = multipl_e_files(data_dir)
    missing += [f"multipl_e/{name} (no pinned sha256: not read)" for name in unknown]
    for f in translated:
        for i, row in iter_jsonl(f):
            prompt = row.get("prompt") or ""
            grams = _word_ngrams(prompt, n) if prompt not in seen_texts else set()
            seen_texts.add(prompt)
            if grams:
                for g in grams:
                    postings[g].append(len(labels))
                labels.append(f"multipl-e/{f.stem}:{row.get('name')}:prompt")
                sizes.append(len(grams))
    if translated:
        loaded.append(f"multipl-e ({len(translated)} files)")
    return BenchmarkIndex(n, labels, sizes, dict(postings), loaded, missing)


def fingerprint_data_dir(data_dir: str | None) -> str:
    if not data_dir or not Path(data_dir).is_dir():
        return "default"
    h = hashlib.sha256()
    for p in sorted(Path(data_dir).rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(data_dir)}:{st.st_size}:{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]

"""LCC, Long Code Completion (Guo et al. 2023): predict the next line of a long source file.

Data: the test split of the Hugging Face datasets microsoft/LCC_python, LCC_java and LCC_csharp
(rows with `context`, the file up to the line, and `gt`, the line), pinned below at a commit. The
files are Parquet; codelm reads them with pyarrow when it is installed, or reads the same rows
as JSONL (one {"context": ..., "gt": ...} per line, e.g. written by `datasets`' to_json). Put them
in DATA_DIR/lcc/ as python.parquet (or python.jsonl[.gz]), java.*, csharp.*. codelm does not
download them (no pinned sha256 known here).

The paper (§3.3, Table 7) evaluates LCC-balanced: validation and test resampled to an even file-
size distribution (548 Python, 412 Java, 512 C# examples, ~17k tokens on average). That sample is
not published and its recipe is not given beyond this, so codelm evaluates whatever file it is
given: the public test split as is, or a resample of your own saved in the same format.

Protocol: the context is the prompt, greedy; the prediction is the first non-blank line of the
generation. Scores (no execution): exact match (the prediction's whitespace-separated tokens equal
the reference's, as in CodeXGLUE line completion; reported as pass@1), edit similarity (difflib's
ratio on the stripped lines, what fuzzywuzzy's fuzz.ratio computes, in [0, 1]) and BLEU-4 (per
line over code tokens with add-one smoothing of the 2- to 4-gram precisions, averaged; the paper
does not say which BLEU it used). `lcc-LANG-4k` keeps only the last 4,000 tokens of the context,
counted with the model's tokenizer, as the paper does for models without long-context fine-tuning.
"""
from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

from codelm.benchdata.files import ExternalFile, locate_external
from codelm.errors import CodelmError, ConfigError, DataError
from codelm.evaluate import scoring
from codelm.evaluate.scoring import ScoreOptions, ScoringPlan
from codelm.evaluate.task import Protocol, Task
from codelm.files import iter_jsonl

_HF = "https://huggingface.co/datasets/microsoft/"
SOURCES = {
    # LCC_python: the Hub's Parquet conversion of the test split (same rows; the commit id of the
    # repository's own data/ upload could not be read here).
    "python": ExternalFile("LCC python", "lcc", ("python.parquet", "python.jsonl", "python.jsonl.gz"),
                           _HF + "LCC_python/resolve/62673bb646ab515a75415eda3e06b5b48622b1e7/"
                           "default/test/0000.parquet",
                           how="save it as python.parquet"),
    "java": ExternalFile("LCC java", "lcc", ("java.parquet", "java.jsonl", "java.jsonl.gz"),
                         _HF + "LCC_java/resolve/f791da85e697bf951d0b8662601ad0a2cb6060fe/data/"
                         "test-00000-of-00001-b0e71813cb9076bc.parquet", how="save it as java.parquet"),
    "csharp": ExternalFile("LCC csharp", "lcc", ("csharp.parquet", "csharp.jsonl", "csharp.jsonl.gz"),
                           _HF + "LCC_csharp/resolve/d3edce117c7b73f0d537cff5d696407f2182c76d/data/"
                           "test-00000-of-00001-e75190255efc069b.parquet", how="save it as csharp.parquet"),
}
LANGUAGES = tuple(SOURCES)
NAMES = tuple(f"lcc-{x}{suffix}" for x in LANGUAGES for suffix in ("", "-4k"))
SHORT_CONTEXT_TOKENS = 4000  # what the paper gives models without long-context fine-tuning
_TOKEN = re.compile(r"\w+|[^\w\s]")


# ----------------------------------------------------------------------------- data
def _rows_of(path: Path) -> list[tuple[int, dict]]:
    """(line or row number, row) for a JSONL(.gz) or Parquet file."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # optional: only Parquet files need it
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or convert the file to "
                            "JSONL with one {\"context\": ..., \"gt\": ...} object per line") from None
        try:
            table = pq.read_table(path, columns=["context", "gt"])
        except Exception as e:  # noqa: BLE001 - pyarrow raises its own error types for bad files
            raise DataError(f"{path}: not a readable LCC Parquet file ({e})") from None
        return list(enumerate(table.to_pylist(), 1))
    return list(iter_jsonl(path))


def read_problems(path: Path, language: str) -> list[dict]:
    problems = []
    for number, row in _rows_of(path):
        at = f"{path}: row {number}" if path.suffix == ".parquet" else f"{path}:{number}"
        if not isinstance(row, dict):
            raise DataError(f"{at}: expected a JSON object")
        for key in ("context", "gt"):
            if key not in row:
                raise DataError(f"{at}: missing field {key}")
            if not isinstance(row[key], str):
                raise DataError(f"{at}: field {key} must be a string")
        if not row["gt"].strip():
            raise DataError(f"{at}: field gt is blank")
        problems.append({"task_id": f"LCC-{language}/{len(problems)}", "context": row["context"], "gt": row["gt"]})
    if not problems:
        raise DataError(f"{path}: no LCC rows")
    return problems


def language_of(benchmark: str) -> str:
    """"lcc-python", "lcc-python-4k" (or "python") -> "python"."""
    language = benchmark.strip().lower().removeprefix("lcc-").removesuffix("-4k")
    if language not in SOURCES:
        raise CodelmError(f"unknown LCC benchmark {benchmark!r}; valid: {', '.join('lcc-' + x for x in LANGUAGES)}")
    return language


def load_problems(benchmark: str, data_dir=None) -> list[dict]:
    """The rows of lcc-LANG (or lcc-LANG-4k: the same rows)."""
    language = language_of(benchmark)
    path, _ = locate_external(SOURCES[language], data_dir)
    return read_problems(path, language)


# ----------------------------------------------------------------------------- protocol
def first_line(text: str) -> str:
    """The prediction: the first line of the generation with anything on it."""
    for line in text.split("\n"):
        if line.strip():
            return line.rstrip()
    return ""


def postprocess(task, text: str) -> str:
    return first_line(text)


def task_loader(language: str):
    def load(data_dir):
        return [Task(p["task_id"], p["context"], meta={"language": language})
                for p in load_problems(f"lcc-{language}", data_dir)]
    return load


def last_tokens(text: str, tokenizer, limit: int) -> str:
    """The longest suffix of `text` that the tokenizer encodes in at most `limit` tokens.

    Found by bisection on the cut's character position, starting near the position the token count
    suggests, so a 100k-token file costs a few encodes of ~`limit` tokens, not of the whole file."""
    ids = tokenizer.encode(text)
    if len(ids) <= limit:
        return text

    def fits(start: int) -> bool:
        return len(tokenizer.encode(text[start:])) <= limit

    guess = len(text) - len(tokenizer.decode(ids[-limit:]))
    low, step = max(0, guess), 64
    while low > 0 and fits(low):  # the guess may cut too much: widen downwards
        low = max(0, low - step)
        step *= 2
    high = min(len(text), max(low, guess) + 64)
    while not fits(high):
        high = min(len(text), high + step)
        step *= 2
    while low < high:  # smallest start that fits, between a start that does not and one that does
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return text[low:]


def shorten_contexts(limit: int):
    def adapt(tasks, backend):
        tokenizer = getattr(backend, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError(f"this benchmark keeps the last {limit} tokens of each context and needs the model's "
                              "tokenizer to count them: with --backend openai, give --tokenizer DIR")
        return [replace(t, prompt=last_tokens(t.prompt, tokenizer, limit)) for t in tasks]
    return adapt


def protocols() -> dict:
    found = {}
    for language in LANGUAGES:
        name = f"lcc-{language}"
        found[name] = Protocol(name, name, "lcc", task_loader(language), postprocess, max_new_tokens=128, ks=(1,),
                               paper="Table 7 (on LCC-balanced; see benchmarks/lcc.py)")
        found[name + "-4k"] = Protocol(name + "-4k", name, "lcc", task_loader(language), postprocess,
                                       max_new_tokens=128, ks=(1,), adapt_tasks=shorten_contexts(SHORT_CONTEXT_TOKENS),
                                       paper="Table 7, models without LCFT")
    return found


# ----------------------------------------------------------------------------- metrics
def exact_match(prediction: str, reference: str) -> bool:
    return prediction.split() == reference.split()


def edit_similarity(prediction: str, reference: str) -> float:
    return difflib.SequenceMatcher(None, prediction.strip(), reference.strip(), autojunk=False).ratio()


def code_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def bleu(prediction: str, reference: str, max_n: int = 4) -> float:
    """Sentence BLEU-4 on code tokens; n-gram precisions for n >= 2 smoothed by adding one to the
    matches and the counts (Lin and Och 2004), so a short exact line scores 1 and a near miss > 0."""
    hyp, ref = code_tokens(prediction), code_tokens(reference)
    if not hyp or not ref:
        return float(hyp == ref)
    log_precision = 0.0
    for n in range(1, max_n + 1):
        hyp_ngrams = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
        ref_ngrams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        matches = sum(min(c, ref_ngrams[g]) for g, c in hyp_ngrams.items())
        total = max(len(hyp) - n + 1, 0)
        if n == 1:
            if matches == 0:
                return 0.0
            log_precision += math.log(matches / total)
        else:
            log_precision += math.log((matches + 1) / (total + 1))
    brevity = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return brevity * math.exp(log_precision / max_n)


def plan(benchmark: str, options: ScoreOptions) -> "LccPlan":
    return LccPlan(benchmark, options)


def score(benchmark: str, samples, out=None, options: ScoreOptions = ScoreOptions(ks=(1,))) -> dict:
    """Score a samples JSONL (task_id "LCC-LANG/N", completion = the predicted line); nothing is run."""
    return scoring.score(plan(benchmark, options), samples, out, options)


class LccPlan(ScoringPlan):
    def __init__(self, benchmark: str, options: ScoreOptions):
        self.name = benchmark
        language = language_of(benchmark)
        self.path, self.sha256 = locate_external(SOURCES[language], options.data_dir)
        self.problems = {p["task_id"]: p for p in read_problems(self.path, language)}

    def judge(self, problem: dict, sample: dict) -> dict:
        prediction, reference = first_line(sample["completion"]), problem["gt"]
        match = exact_match(prediction, reference)
        return {"prediction": prediction, "gt": reference, "passed": match,
                "result": "passed" if match else "failed: not an exact match",
                "edit_similarity": round(edit_similarity(prediction, reference), 6),
                "bleu": round(bleu(prediction, reference), 6)}

    def summary_fields(self, rows: list[dict], ks) -> dict:
        def mean(key):
            return sum(r[key] for r in rows) / len(rows)
        return {"exact_match": mean("passed"), "edit_similarity": mean("edit_similarity"), "bleu": mean("bleu"),
                "data": str(self.path), "data_sha256": self.sha256}

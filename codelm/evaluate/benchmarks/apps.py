"""APPS (Hendrycks et al. 2021): 5,000 test problems from coding sites, scored by running hidden tests.

Data: test.jsonl of the Hugging Face dataset codeparrot/apps, one problem per line with problem_id,
question, solutions (a JSON string: a list of Python programs, possibly empty), input_output (a JSON
string: {"inputs": [...], "outputs": [...]} plus "fn_name" for call-based problems), difficulty
(introductory, interview, competition), url and starter_code. codelm does not download it (1.3 GB,
no pinned sha256 known here): put it in DATA_DIR/apps/ (see datasets.locate_external).

Protocol (reference doc §5.1, paper Table 3): 2-shot, pass@5/10/100 at T=0.6, top-p 0.95, no
filtering by the problem's example tests. The paper's Fig. 14 prompt is described there as answers
wrapped in triple single quotes and a "question guide": "read from and write to standard IO" or
"use the provided function signature". Its exact wording is not reachable here, so the layout below
is codelm's reconstruction, in APPS's own QUESTION/ANSWER form:

    QUESTION:
    {question}
    {starter code, call-based problems only}
    Your code should {guide}.
    ANSWER:
    '''
    {code}
    '''

with two hand-written shots (one standard-input, one call-based; the paper does not say which
problems it used) before the query, separated by blank lines. Generation stops at the closing
quotes or a new QUESTION:. Scoring runs the program on every test case in the sandbox
(apps_check.py: APPS's in-process execution, 4 s per test case as APPS's harness, whitespace-
normalised line comparison); a sample passes when every test case passes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from codelm.benchdata.files import ExternalFile, locate_external
from codelm.errors import CodelmError, DataError
from codelm.evaluate import passk, scoring
from codelm.evaluate.sandbox import Limits, PythonJob
from codelm.evaluate.scoring import ScoreOptions, ScoringPlan
from codelm.evaluate.task import Protocol, Task, cut, extract_code
from codelm.files import iter_jsonl

SOURCE = ExternalFile(
    benchmark="APPS", folder="apps", names=("test.jsonl", "test.jsonl.gz"),
    # The dataset's main branch (last commit 21e74dd, Oct 2022); its full commit id could not be read here.
    url="https://huggingface.co/datasets/codeparrot/apps/resolve/main/test.jsonl",
    how="1.3 GB; e.g. huggingface-cli download codeparrot/apps test.jsonl --repo-type dataset "
        "--local-dir DATA_DIR/apps")
DIFFICULTIES = ("introductory", "interview", "competition")
NAMES = ("apps",) + tuple(f"apps-{d}" for d in DIFFICULTIES)
TIME_LIMIT = 4.0  # CPU seconds per test case: APPS's harness's `timeout = 4`
STOP = ("\n'''", "\nQUESTION:")
GUIDE = {False: "read from and write to standard IO", True: "use the provided function signature"}
CHECKER_KEY = "apps_check"
CHECKER_SOURCE = (Path(__file__).parent / "apps_check.py").read_text(encoding="utf-8")
_FIELDS = ("problem_id", "question", "input_output", "difficulty")

# Two shots written for codelm (not APPS problems): one of each kind, so the model sees both guides.
SHOTS = (
    ("You are given n integers. Print the sum of those of them that are even.\n\n"
     "-----Input-----\n\nThe first line contains n (1 <= n <= 100). The second line contains n integers "
     "a_1, ..., a_n (|a_i| <= 10^9).\n\n-----Output-----\n\nPrint one integer: the sum of the even a_i.\n\n"
     "-----Examples-----\nInput\n4\n1 2 3 4\n\nOutput\n6",
     "", False,
     "n = int(input())\nnumbers = list(map(int, input().split()))\nprint(sum(x for x in numbers if x % 2 == 0))"),
    ("Given a string s, return the length of its longest block of equal consecutive characters. "
     "For the empty string, return 0.\n\nExamples:\nlongest_block(\"aabbbc\") -> 3\nlongest_block(\"\") -> 0",
     "def longest_block(s):", True,
     "def longest_block(s):\n    best = run = 0\n    previous = None\n    for ch in s:\n"
     "        run = run + 1 if ch == previous else 1\n        previous = ch\n        best = max(best, run)\n"
     "    return best"),
)


# ----------------------------------------------------------------------------- data
def _json_field(path: Path, lineno: int, name: str, text):
    """A JSON-in-a-string field ("" means absent). APPS has integers past Python's 4,300-digit limit."""
    if text in ("", None):
        return None
    if not isinstance(text, str):
        return text  # already decoded (a converted copy of the file)
    limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else None
    try:
        if limit is not None:
            sys.set_int_max_str_digits(0)
        return json.loads(text)
    except ValueError as e:
        raise DataError(f"{path}:{lineno}: field {name} is not valid JSON ({e})") from None
    finally:
        if limit is not None:
            sys.set_int_max_str_digits(limit)


def _problem(path: Path, lineno: int, row: dict) -> dict:
    for key in _FIELDS:
        if key not in row:
            raise DataError(f"{path}:{lineno}: missing field {key}")
    if row["difficulty"] not in DIFFICULTIES:
        raise DataError(f"{path}:{lineno}: difficulty {row['difficulty']!r} is not one of {', '.join(DIFFICULTIES)}")
    tests = _json_field(path, lineno, "input_output", row["input_output"]) or {}
    if not isinstance(tests, dict) or not isinstance(tests.get("inputs", []), list) \
            or not isinstance(tests.get("outputs", []), list):
        raise DataError(f"{path}:{lineno}: input_output must hold lists 'inputs' and 'outputs'")
    if len(tests.get("inputs", [])) != len(tests.get("outputs", [])):
        raise DataError(f"{path}:{lineno}: input_output has {len(tests['inputs'])} inputs but "
                        f"{len(tests['outputs'])} outputs")
    solutions = _json_field(path, lineno, "solutions", row.get("solutions")) or []
    if not isinstance(solutions, list) or not all(isinstance(s, str) for s in solutions):
        raise DataError(f"{path}:{lineno}: solutions must be a JSON list of programs")
    starter = row.get("starter_code") or ""
    fn_name = tests.get("fn_name") or None
    # The test cases stay as the file's JSON text (decoded again by tests_of when a task is scored):
    # decoded, all of APPS's would take several times the file's 1.3 GB.
    return {
        "task_id": f"APPS/{row['problem_id']}", "problem_id": row["problem_id"], "difficulty": row["difficulty"],
        "question": row["question"], "starter_code": starter, "fn_name": fn_name,
        "use_class": "class Solution" in starter, "url": row.get("url", ""),
        "input_output": row["input_output"], "test_count": len(tests.get("inputs", [])),
        "solution": solutions[0] if solutions else None,
    }


def tests_of(problem: dict) -> dict:
    """{"inputs": [...], "outputs": [...]} of a problem returned by load_problems."""
    tests = _json_field(Path("<apps>"), 0, "input_output", problem["input_output"]) or {}
    return {"inputs": tests.get("inputs", []), "outputs": tests.get("outputs", [])}


def difficulty_of(benchmark: str) -> str | None:
    """"apps" -> None (all), "apps-interview" -> "interview"."""
    difficulty = benchmark.strip().lower().removeprefix("apps").removeprefix("-") or None
    if difficulty is not None and difficulty not in DIFFICULTIES:
        raise CodelmError(f"unknown APPS difficulty {difficulty!r}; valid: {', '.join(DIFFICULTIES)}")
    return difficulty


def load_problems(benchmark: str = "apps", data_dir=None) -> list[dict]:
    """The test problems of apps (all) or apps-DIFFICULTY, in file order; the first bad line raises DataError."""
    difficulty = difficulty_of(benchmark)
    path, _ = locate_external(SOURCE, data_dir)
    return read_problems(path, difficulty)


def read_problems(path: Path, difficulty: str | None = None) -> list[dict]:
    problems, seen = [], set()
    for lineno, row in iter_jsonl(path):
        # Only this difficulty's test cases are decoded: the whole file is 1.3 GB of them.
        if difficulty is not None and row.get("difficulty") != difficulty and row.get("difficulty") in DIFFICULTIES:
            continue
        problem = _problem(path, lineno, row)
        if problem["task_id"] in seen:
            raise DataError(f"{path}:{lineno}: problem_id {row['problem_id']} appears twice")
        seen.add(problem["task_id"])
        problems.append(problem)
    if not problems:
        raise DataError(f"{path}: no APPS problems" + (f" of difficulty {difficulty}" if difficulty else ""))
    return problems


# ----------------------------------------------------------------------------- prompt
def _block(question: str, starter: str, call_based: bool) -> str:
    starter = starter.rstrip()
    return (f"QUESTION:\n{question.strip()}\n" + (f"{starter}\n" if starter else "")
            + f"Your code should {GUIDE[call_based]}.\nANSWER:\n'''\n")


def prompt(problem: dict) -> str:
    shots = "\n\n".join(_block(q, starter, call) + code + "\n'''" for q, starter, call, code in SHOTS)
    return shots + "\n\n" + _block(problem["question"], problem["starter_code"], problem["fn_name"] is not None)


def task_loader(benchmark: str):
    def load(data_dir):
        problems = load_problems(benchmark, data_dir)
        usable = [p for p in problems if p["test_count"]]
        if len(usable) < len(problems):
            print(f"codelm: APPS: {len(problems) - len(usable)} problem(s) without test cases left out",
                  file=sys.stderr)
        return [Task(p["task_id"], prompt(p), stop=STOP, meta={"difficulty": p["difficulty"]}) for p in usable]
    return load


def postprocess(task, text: str) -> str:
    if "```" in text:  # a chat model's fenced answer (--chat)
        text = extract_code(text)
    return cut(text, STOP).strip("\n") + "\n"


def protocols() -> dict:
    found = {}
    for difficulty in (None,) + DIFFICULTIES:
        name = "apps" if difficulty is None else f"apps-{difficulty}"
        found[name] = Protocol(name, name, "apps", task_loader(name), postprocess, max_new_tokens=1024,
                               sample_temperature=0.6, ks=(1, 5, 10, 100), paper="Table 3")
    return found


# ----------------------------------------------------------------------------- scoring
def sample_job(problem: dict, code: str, time_limit: float = TIME_LIMIT) -> PythonJob:
    tests = problem["test_count"]
    # Each test case has its own CPU alarm; the job's limit only stops a program that swallows it.
    cpu = time_limit * max(1, tests) + 2
    return PythonJob(
        stages=[], limits=Limits(cpu_seconds=cpu, wall_seconds=2 * cpu + 10),
        checker={"module": CHECKER_KEY, "function": "run_tests",
                 "args": {"program": code, "tests": {"$ref": tests_key(problem)}, "fn_name": problem["fn_name"],
                          "use_class": problem["use_class"], "time_limit": time_limit}},
        needs=(CHECKER_KEY, tests_key(problem)), int_max_str_digits=0)


def tests_key(problem: dict) -> str:
    return f"apps-tests:{problem['task_id']}"


def verdict(result) -> tuple[bool, str, int]:
    """(passed, result text, test cases passed) of one sample job."""
    passed_tests = int(result.milestones.get("tests_passed") or 0)
    if result.status == "passed":
        return True, "passed", int((result.result or {}).get("tests", passed_tests))
    if result.timed_out or result.reason.startswith("TestTimeout"):
        return False, "timed out", passed_tests
    return False, f"failed: {result.reason}", passed_tests


def plan(benchmark: str, options: ScoreOptions) -> "AppsPlan":
    """`timeout` is the CPU limit per test case (default 4 s, as APPS)."""
    return AppsPlan(benchmark, options)


def score(benchmark: str, samples, out=None, options: ScoreOptions = ScoreOptions(ks=(1, 5, 10, 100))) -> dict:
    """Score a samples JSONL (task_id "APPS/N", completion = the whole program) in the sandbox."""
    return scoring.score(plan(benchmark, options), samples, out, options)


class AppsPlan(ScoringPlan):
    calibrated = False  # each test case has its own limit (TIME_LIMIT, or --timeout)
    rerun_timeouts = False  # a program past its limit on every test case would take minutes alone

    def __init__(self, benchmark: str, options: ScoreOptions):
        self.name = benchmark
        self.difficulty = difficulty_of(benchmark)
        self.path, self.sha256 = locate_external(SOURCE, options.data_dir)
        # Problems without test cases are not tasks (task_loader leaves them out): a sample for one is an error.
        self.problems = {p["task_id"]: p for p in read_problems(self.path, self.difficulty) if p["test_count"]}
        self.time_limit = TIME_LIMIT if options.timeout is None else float(options.timeout)
        self.journal_fields = {"time_limit": self.time_limit}

    def definitions(self, task_ids) -> dict:
        return {CHECKER_KEY: ("module", CHECKER_SOURCE)}

    def task_definitions(self, problem: dict) -> dict:
        # Shipped per task, dropped after its last sample: all of APPS's test cases would weigh gigabytes.
        return {tests_key(problem): ("value", tests_of(problem))}

    def sample_job(self, problem: dict, sample: dict) -> PythonJob:
        return sample_job(problem, sample["completion"], self.time_limit)

    def row_fields(self, result, problem: dict) -> dict:
        ok, text, passed_tests = verdict(result)
        return {"passed": ok, "result": text, "tests_passed": passed_tests, "tests": problem["test_count"]}

    def summary_fields(self, rows: list[dict], ks) -> dict:
        by_difficulty = {}
        for level in DIFFICULTIES:
            subset = [r for r in rows if self.problems[r["task_id"]]["difficulty"] == level]
            if subset and self.difficulty is None:
                counts = scoring.task_counts(subset)
                by_difficulty[level] = {"tasks": len(counts), **passk.totals(counts, ks)}
        return {"time_limit_per_test_s": self.time_limit, "data": str(self.path), "data_sha256": self.sha256,
                **({"by_difficulty": by_difficulty} if by_difficulty else {})}

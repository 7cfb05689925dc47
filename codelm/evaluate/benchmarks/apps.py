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
import os
import sys
import time
from pathlib import Path

from codelm.files import iter_jsonl
from codelm.errors import CodelmError, DataError
from codelm.benchdata.files import ExternalFile, locate_external
from codelm.evaluate.scoring import read_samples, summarize
from codelm.evaluate.task import Protocol, Task, cut, extract_code

SOURCE = ExternalFile(
    benchmark="APPS", folder="apps", names=("test.jsonl", "test.jsonl.gz"),
    # The dataset's main branch (last commit 21e74dd, Oct 2022); its full commit id could not be read here.
    url="https://huggingface.co/datasets/codeparrot/apps/resolve/main/test.jsonl",
    how="1.3 GB; e.g. huggingface-cli download codeparrot/apps test.jsonl --repo-type dataset "
        "--local-dir DATA_DIR/apps")
DIFFICULTIES = ("introductory", "interview", "competition")
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


def load_problems(difficulty: str | None = None, data_dir=None) -> list[dict]:
    """APPS test problems in file order, of one difficulty or all; the first bad line raises DataError."""
    if difficulty is not None and difficulty not in DIFFICULTIES:
        raise CodelmError(f"unknown APPS difficulty {difficulty!r}; valid: {', '.join(DIFFICULTIES)}")
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


def task_loader(difficulty: str | None):
    def load(data_dir):
        problems = load_problems(difficulty, data_dir)
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
        found[name] = Protocol(name, name, "apps", task_loader(difficulty), postprocess, max_new_tokens=1024,
                               sample_temperature=0.6, ks=(1, 5, 10, 100), paper="Table 3")
    return found


# ----------------------------------------------------------------------------- scoring
def sample_job(problem: dict, code: str, time_limit: float = TIME_LIMIT):
    from codelm.evaluate.sandbox import Limits, PythonJob

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


def score(benchmark: str, samples_path, out_path, data_dir=None, workers: int | None = None, sandbox: str = "auto",
          timeout: float | None = None, ks=(1, 5, 10, 100), resume: bool = False, progress: bool = True) -> dict:
    """Score a samples JSONL (task_id "APPS/N", completion = the whole program) in the sandbox.

    `timeout` is the CPU limit per test case (default 4 s, as APPS)."""
    started = time.monotonic()
    difficulty = benchmark.removeprefix("apps").removeprefix("-") or None
    path, sha256 = locate_external(SOURCE, data_dir)
    # Problems without test cases are not tasks (task_loader leaves them out): a sample for one is an error.
    problems = {p["task_id"]: p for p in read_problems(path, difficulty) if p["test_count"]}
    samples = read_samples(Path(samples_path), problems)
    time_limit = TIME_LIMIT if timeout is None else float(timeout)
    if time_limit <= 0:
        raise CodelmError(f"--timeout must be positive, got {timeout}")

    def define(pool, task_id):
        pool.define_module(CHECKER_KEY, CHECKER_SOURCE)
        pool.define_value(tests_key(problems[task_id]), tests_of(problems[task_id]))

    def release(pool, task_id):
        pool.definitions.pop(tests_key(problems[task_id]), None)

    def row(sample, result):
        ok, text, passed_tests = verdict(result)
        return {**sample, "passed": ok, "result": text, "tests_passed": passed_tests,
                "tests": problems[sample["task_id"]]["test_count"]}

    rows, extra = run_journaled(
        benchmark, samples, lambda s: sample_job(problems[s["task_id"]], s["completion"], time_limit), row,
        Path(out_path), define=define, release=release, workers=workers, sandbox=sandbox, resume=resume,
        progress=progress, header_extra={"time_limit": time_limit})
    by_difficulty = {}
    for level in DIFFICULTIES:
        subset = [r for r in rows if problems[r["task_id"]]["difficulty"] == level]
        if subset and difficulty is None:
            by_difficulty[level] = _pass_at(subset, ks)
    return summarize(benchmark, rows, ks, Path(out_path), {
        "elapsed_s": round(time.monotonic() - started, 2), "time_limit_per_test_s": time_limit,
        "data": str(path), "data_sha256": sha256, **({"by_difficulty": by_difficulty} if by_difficulty else {}),
        **extra})


def _pass_at(rows: list[dict], ks) -> dict:
    from codelm.evaluate import passk

    counts: dict[str, list[int]] = {}
    for r in rows:
        c = counts.setdefault(r["task_id"], [0, 0])
        c[0] += 1
        c[1] += bool(r["passed"])
    return {"tasks": len(counts), **passk.totals({k: tuple(v) for k, v in counts.items()}, ks)}


# ----------------------------------------------------------------------------- the sandbox loop
def run_journaled(name: str, samples: list[dict], job_of, row_of, out_path: Path, define=None, release=None,
                  workers=None, sandbox: str = "auto", resume: bool = False, progress: bool = True,
                  header_extra=None, config=None) -> tuple[list[dict], dict]:
    """Run one sandbox job per sample, journaling each verdict (OUT.partial) so `resume` continues a
    killed run; writes OUT in sample order. Returns (rows, extra summary fields). `define(pool, task_id)`
    ships what a task's jobs need before its first job; `release(pool, task_id)` forgets it after the
    last. Shared by APPS and DS-1000."""
    import concurrent.futures
    import hashlib
    import queue

    from tqdm import tqdm

    from codelm.evaluate.runner import Journal
    from codelm.evaluate.sandbox import SandboxConfig, SandboxPool, describe_weakness

    out_path = Path(out_path)
    if not out_path.parent.is_dir():
        raise CodelmError(f"output folder {out_path.parent} does not exist")
    digest = hashlib.sha256(json.dumps(samples, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
    header = {"codelm_score_journal": 1, "benchmark": name, "samples_sha256": digest, "samples": len(samples),
              **(header_extra or {})}
    journal = Journal(out_path.with_name(out_path.name + ".partial"), header)
    if resume and not journal.path.exists() and out_path.is_file():
        previous = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(previous) == len(samples) and all(p.get("task_id") == s["task_id"] and p.get("sample") == s.get("sample")
                                                 for p, s in zip(previous, samples)):
            return previous, {"resumed": "already complete"}
    journal.open(resume)
    extra: dict = {}
    try:
        if len(journal.done) < len(samples):
            with SandboxPool(workers=workers or os.cpu_count() or 1,
                             config=config or SandboxConfig(mode=sandbox)) as pool:
                extra["sandbox"] = pool.mode
                notes = describe_weakness(pool.isolation)
                if notes:
                    extra["sandbox_notes"] = notes
                todo = [i for i in range(len(samples)) if i not in journal.done]
                pending = iter(todo)
                left: dict[str, int] = {}
                for i in todo:
                    left[samples[i]["task_id"]] = left.get(samples[i]["task_id"], 0) + 1
                defined: set[str] = set()
                in_flight: dict = {}
                completed: queue.SimpleQueue = queue.SimpleQueue()
                window = 16 * len(pool.workers)
                bar = tqdm(total=len(samples) - len(journal.done), desc=f"scoring {name}", unit="sample",
                           disable=not progress)
                while True:
                    while len(in_flight) < window:
                        i = next(pending, None)
                        if i is None:
                            break
                        task_id = samples[i]["task_id"]
                        if define is not None and task_id not in defined:
                            define(pool, task_id)
                            defined.add(task_id)
                        future = pool.submit(job_of(samples[i]))
                        in_flight[future] = i
                        future.add_done_callback(completed.put)
                    if not in_flight:
                        break
                    future: concurrent.futures.Future = completed.get()
                    i = in_flight.pop(future)
                    journal.add(i, row_of(samples[i], future.result()))
                    bar.update()
                    task_id = samples[i]["task_id"]
                    left[task_id] -= 1
                    if left[task_id] == 0 and release is not None:
                        release(pool, task_id)
                bar.close()
    except BaseException:
        journal.close()  # kept for --resume
        raise
    return journal.finish(out_path, len(samples)), extra

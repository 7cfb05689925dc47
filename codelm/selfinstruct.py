"""`codelm selfinstruct`: question / tests / solution triplets made by models and kept by execution.

The paper's self-instruct recipe (§2.5, reference doc §4), one stage after the other:

  1 questions  a model writes interview questions (Fig. 10 prompt, asking for 50 at a time);
               exact duplicates (after collapsing whitespace) are dropped
  2 tests      a code model writes 5 unit tests per question between [TESTS] tags (Fig. 11)
  3 solutions  10 solutions per question between [PYTHON] tags (Fig. 12); each prompt shows the
               question and ONE of its tests, drawn at random, the others hidden, so that a
               solution fitted to the visible test can still fail
  4 execution  each solution runs against all its question's tests in the sandbox; the first
               solution (in sampling order) that passes every test is kept

Each stage has its own backend and model (native, hf, openai). A completion backend is sent the
paper's prompt text itself ([INST] ... [/INST] with the worked example); a chat backend (openai
with --chat) gets the same instruction and example as one user message, since a chat server lays
out [INST] itself and refuses those tags in user text.

Run folder (--out): run.json (settings, each stage's backend), cache-*.jsonl (generation caches:
a killed run resumes without generating anything twice), verdicts.jsonl (a journal of executed
solutions), questions.jsonl, tests.jsonl, solutions.jsonl (every record with its provenance:
model, prompt, seed), selfinstruct.jsonl (the kept triplets with their test results),
dialogs.jsonl (the triplets as instruct dialogs for `codelm train`), summary.json.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from codelm.data.instruct import parse_tests, tagged_program
from codelm.errors import CodelmError, ConfigError
from codelm.evaluate.sandbox import Limits, PythonJob, SandboxConfig, SandboxPool
from codelm.files import claim_output, open_run, write_json, write_jsonl
from codelm.generate.backends import GenerationCache, Request, generate_all, make_backend

RUN_VERSION = 1
STAGES = ("questions", "tests", "solutions")

# ----------------------------------------------------------------------------- the paper's prompts
QUESTIONS_INSTRUCTION = (
    "Write 50 programming interview questions of easy and medium complexity. Provide questions on a diverse range "
    "of subjects, and make sure no two questions are alike. Make sure the problems can be solved with a single "
    "standalone Python function using standard libraries.")
SEED_QUESTIONS = (
    "Write a function that finds the maximum depth of list nesting in a given list.",
    "Given an integer array nums, rotate the array to the right by k steps, where k is non-negative.",
    "Write a function that gets the musical pitch that is closest to a given frequency in Hz. A pitch should consist "
    "of a letter, possibly a # sign, and an octave number.",
    "Write a function that removes any sequences of whitespace that are between numbers in an input string.",
    "Write a function that counts the number of words in a string that have length n, where n is an input. The "
    "function should return a list of words of length n.",
    "Write a function that returns the longest palindromic substring in a given string.",
    "Create a function that will find the length of the longest substring without repeating characters in a given "
    "string.",
    "Write a function that reverses the diagits in a number.",
    "Write a function that finds the valleys in a list of integers.",
    "Write a python function that reverses every group of k words in a sentence.",
)
TESTS_INSTRUCTION = (
    "Your task is to write 5 tests to check the correctness of a function that solves a programming problem.\n"
    "The tests must be between [TESTS] and [/TESTS] tags.\n"
    "You must write the comment \"#Test case n:\" on a separate line directly above each assert statement, where n "
    "represents the test case number, starting from 1 and increasing by one for each subsequent test case.")
EXAMPLE_QUESTION = "Write a Python function to get the unique elements of a list."
EXAMPLE_TESTS = ("[TESTS]\n# Test case 1:\nassert get_unique_elements([]) == []\n# Test case 2:\n"
                 "assert get_unique_elements([1]) == [1]\n# Test case 3:\n"
                 "assert get_unique_elements([1, 2, 3, 2, 1]) == [1, 2, 3]\n[/TESTS]")
SOLUTION_INSTRUCTION = (
    "Your task is to write a Python function to solve a programming problem.\n"
    "The Python code must be between [PYTHON] and [/PYTHON] tags.\n"
    "You are given one example test from which you can infere the function signature.")
EXAMPLE_TEST = "assert get_unique_elements([1, 2, 3, 2, 1]) == [1, 2, 3]"
EXAMPLE_SOLUTION = "[PYTHON]\ndef get_unique_elements(my_list):\n    return list(set(my_list))\n[/PYTHON]"
# A completion model that finished its answer goes on with the next [INST]: cut there.
COMPLETION_STOP = ("[INST]",)

CHECKER_SOURCE = '''
def run_tests(namespace, report, tests):
    """Run each test in the solution's namespace; one verdict per test."""
    verdicts = []
    for i, test in enumerate(tests):
        try:
            exec(compile(test, "<test %d>" % (i + 1), "exec"), namespace)
            verdicts.append("passed")
        except Exception as e:  # SystemExit and the like propagate: an early exit fails the job
            verdicts.append(("failed: %s: %s" % (type(e).__name__, e))[:300])
    return verdicts
'''


def questions_prompt(chat: bool) -> str:
    examples = "\n".join(f"{i}. {q}" for i, q in enumerate(SEED_QUESTIONS, 1))
    if chat:
        return f"{QUESTIONS_INSTRUCTION}\nNumber them, one per line, starting like this:\n{examples}"
    return f"[INST] {QUESTIONS_INSTRUCTION} [/INST]\n{examples}\n"


def unit_tests_prompt(question: str, chat: bool) -> str:
    if chat:
        return (f"{TESTS_INSTRUCTION}\n\nExample:\nProblem: {EXAMPLE_QUESTION}\n{EXAMPLE_TESTS}\n\n"
                f"Problem: {question}")
    return (f"[INST] {TESTS_INSTRUCTION}\n\nProblem: {EXAMPLE_QUESTION}\n[/INST]\n{EXAMPLE_TESTS}\n\n"
            f"[INST] Problem: {question}\n[/INST]\n")


def solution_prompt(question: str, test: str, chat: bool) -> str:
    test = test.strip()
    if chat:
        return (f"{SOLUTION_INSTRUCTION}\n\nExample:\nProblem: {EXAMPLE_QUESTION}\nTest: {EXAMPLE_TEST}\n"
                f"{EXAMPLE_SOLUTION}\n\nProblem: {question}\nTest: {test}")
    return (f"[INST] {SOLUTION_INSTRUCTION}\n\nProblem: {EXAMPLE_QUESTION}\nTest: {EXAMPLE_TEST}\n[/INST]\n"
            f"{EXAMPLE_SOLUTION}\n\n[INST] Problem: {question}\nTest: {test}\n[/INST]\n")


_NUMBERED = re.compile(r"^\s*(\d+)\s*[.)]\s+(.*\S)\s*$")


def parse_questions(text: str, chat: bool) -> list[str]:
    """Numbered items of a generated list; an unnumbered line continues the item above it. In
    completion mode the text continues the ten examples of the prompt, so it starts at item 11."""
    items: list[str] = []
    for line in text.splitlines():
        m = _NUMBERED.match(line)
        if m:
            items.append(m.group(2))
        elif line.strip() and items and not line.lstrip().startswith("["):
            items[-1] += " " + line.strip()
        elif not line.strip() and items and not chat:
            break  # a completion model ends its list with a blank line, then rambles
    seeds = set(SEED_QUESTIONS)
    return [q for q in items if q not in seeds]


def normalise_question(q: str) -> str:
    return " ".join(q.split())


# ----------------------------------------------------------------------------- settings
@dataclass
class StageModel:
    backend: str = "native"
    model: str | None = None
    served_model: str | None = None  # openai: the model's name on the server
    chat: bool = False  # openai: /v1/chat/completions

    def open(self, batch_size: int | None, api_key: str | None):
        if not self.model:
            raise ConfigError("no model for a stage: give --model (or --questions-model, --tests-model, "
                              "--solutions-model)")
        if self.chat and self.backend != "openai":
            raise ConfigError("--chat needs the openai backend")
        options = {}
        if self.backend == "openai":
            options = dict(model=self.served_model, api_key=api_key, chat=self.chat)
        return make_backend(self.backend, self.model, batch_size=batch_size, **options)


@dataclass
class SelfInstructConfig:
    out: str
    questions: StageModel = field(default_factory=StageModel)
    tests: StageModel = field(default_factory=StageModel)
    solutions: StageModel = field(default_factory=StageModel)
    question_prompts: int = 4  # Fig. 10 prompts sent (each asks for 50 questions)
    max_questions: int | None = None  # keep only the first N unique questions
    questions_file: str | None = None  # take stage 1's questions from this file (one per line) instead
    n_tests: int = 5
    n_solutions: int = 10
    question_temperature: float = 0.8
    tests_temperature: float = 0.0
    solution_temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: dict = field(default_factory=lambda: {"questions": 1024, "tests": 384, "solutions": 512})
    seed: int = 0
    batch_size: int | None = None
    api_key: str | None = None
    workers: int | None = None
    sandbox: str = "auto"
    timeout: float = 5.0  # CPU seconds per solution run (all its tests)
    progress: bool = True

    def settings(self) -> dict:
        d = asdict(self)
        for k in ("out", "batch_size", "api_key", "workers", "progress"):
            d.pop(k)
        return d


# ----------------------------------------------------------------------------- helpers
def _qid(question: str) -> str:
    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:12]


def _sampling(temperature: float, top_p: float) -> dict:
    return {"temperature": temperature, "top_p": top_p if temperature > 0 else 1.0}


def _generate(stage: str, backend, items, out: Path, cfg: SelfInstructConfig):
    cache = GenerationCache(out / f"cache-{stage}.jsonl",
                            {"stage": stage, "backend": backend.identity()}).open()
    try:
        completions, stats = generate_all(backend, items, cache, progress=cfg.progress)
    finally:
        cache.close()
    return completions, stats


# ----------------------------------------------------------------------------- stages
def _file_questions(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--questions-file {p} not found")
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def stage_questions(cfg: SelfInstructConfig, backend, out: Path) -> tuple[list[dict], dict]:
    chat = cfg.questions.chat
    prompt = questions_prompt(chat)
    samp = _sampling(cfg.question_temperature, cfg.top_p)
    if cfg.questions_file:  # questions written elsewhere: dedup them, generate none
        items, stats = [], None
        backend, prompt, samp = None, f"(from {cfg.questions_file})", {}
        parsed = [(None, _file_questions(cfg.questions_file))]
    else:
        items = [(Request(prompt, max_new_tokens=cfg.max_new_tokens["questions"],
                          stop=() if chat else COMPLETION_STOP, seed=cfg.seed + i, **samp), i)
                 for i in range(cfg.question_prompts)]
        completions, stats = _generate("questions", backend, items, out, cfg)
        parsed = [(req, parse_questions(comp.text, chat)) for (req, _), comp in zip(items, completions)]
    seen: set[str] = set()
    rows, generated, duplicates = [], 0, 0
    for i, (req, questions) in enumerate(parsed):
        for q in questions:
            generated += 1
            key = normalise_question(q)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            rows.append({"id": _qid(key), "question": key, "model": backend.identity() if backend else None,
                         "prompt": prompt, "prompt_index": i, "seed": req.seed if req else None, **samp})
    if cfg.max_questions is not None:
        rows = rows[:cfg.max_questions]
    write_jsonl(out / "questions.jsonl", rows)
    return rows, {"prompts": len(items), "generated": generated, "duplicates": duplicates, "unique": len(seen),
                  "kept": len(rows), "from_cache": stats.from_cache if stats else 0}


def stage_tests(cfg: SelfInstructConfig, backend, out: Path, questions: list[dict]) -> tuple[list[dict], dict]:
    chat = cfg.tests.chat
    samp = _sampling(cfg.tests_temperature, cfg.top_p)
    items = [(Request(unit_tests_prompt(q["question"], chat), max_new_tokens=cfg.max_new_tokens["tests"],
                      stop=() if chat else COMPLETION_STOP, seed=cfg.seed, **samp), 0) for q in questions]
    completions, stats = _generate("tests", backend, items, out, cfg)
    rows, with_tests, parsed = [], 0, 0
    for q, (req, _), comp in zip(questions, items, completions):
        tests = parse_tests(comp.text)[:cfg.n_tests]
        parsed += len(tests)
        with_tests += bool(tests)
        rows.append({"id": q["id"], "question": q["question"], "tests": tests, "raw": comp.text,
                     "model": backend.identity(), "prompt": req.prompt, "seed": req.seed, **samp})
    write_jsonl(out / "tests.jsonl", rows)
    return rows, {"questions": len(questions), "with_tests": with_tests, "tests_parsed": parsed,
                  "from_cache": stats.from_cache}


def stage_solutions(cfg: SelfInstructConfig, backend, out: Path, tests: list[dict]) -> tuple[list[dict], dict]:
    chat = cfg.solutions.chat
    samp = _sampling(cfg.solution_temperature, cfg.top_p)
    items, owners = [], []
    for t in tests:
        if not t["tests"]:
            continue
        for j in range(cfg.n_solutions):
            # One test shown per attempt, drawn from the question's tests with a seeded generator.
            shown = random.Random(f"{cfg.seed}:{t['id']}:{j}").randrange(len(t["tests"]))
            items.append((Request(solution_prompt(t["question"], t["tests"][shown], chat),
                                  max_new_tokens=cfg.max_new_tokens["solutions"],
                                  stop=() if chat else COMPLETION_STOP, seed=cfg.seed + j, **samp), j))
            owners.append((t, shown))
    completions, stats = _generate("solutions", backend, items, out, cfg)
    rows, tagged = [], 0
    for (t, shown), (req, j), comp in zip(owners, items, completions):
        code = tagged_program(comp.text)
        tagged += code is not None
        rows.append({"id": t["id"], "attempt": j, "shown_test": shown, "code": code, "raw": comp.text,
                     "model": backend.identity(), "prompt": req.prompt, "seed": req.seed, **samp})
    write_jsonl(out / "solutions.jsonl", rows)
    return rows, {"generated": len(rows), "tagged_programs": tagged, "from_cache": stats.from_cache}


def stage_execute(cfg: SelfInstructConfig, out: Path, tests: list[dict], solutions: list[dict]
                  ) -> tuple[list[dict], dict]:
    """Run solutions attempt by attempt (all questions in parallel); a question is done at its first pass."""
    journal_path = out / "verdicts.jsonl"
    done: dict[tuple[str, int], dict] = {}
    if journal_path.exists():
        for line in journal_path.read_text(encoding="utf-8").splitlines():
            try:
                v = json.loads(line)
                done[(v["id"], v["attempt"])] = v
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # the torn last line of a killed run
    # Rewritten without a torn line, so that what is appended next starts on a line of its own.
    write_jsonl(journal_path, done.values())
    by_question: dict[str, list[dict]] = {}
    for s in solutions:
        by_question.setdefault(s["id"], []).append(s)
    test_of = {t["id"]: t for t in tests}
    kept: dict[str, tuple[dict, dict]] = {}
    stats = {"solutions_run": 0, "passed": 0, "failed": 0, "timed_out": 0, "untagged": 0}
    limits = Limits(cpu_seconds=cfg.timeout, wall_seconds=3 * cfg.timeout + 2, memory_mb=1024)
    journal = open(journal_path, "a", encoding="utf-8")
    try:
        with SandboxPool(workers=cfg.workers or os.cpu_count() or 1, config=SandboxConfig(mode=cfg.sandbox)) as pool:
            pool.define_module("selfinstruct_checker", CHECKER_SOURCE)
            bar = tqdm(total=len(by_question), desc="executing", unit="question", disable=not cfg.progress)
            for attempt in range(cfg.n_solutions):
                futures = []
                for qid, sols in by_question.items():
                    if qid in kept or attempt >= len(sols):
                        continue
                    s = sols[attempt]
                    if (qid, attempt) in done:
                        futures.append((s, None))
                        continue
                    if s["code"] is None:
                        v = {"id": qid, "attempt": attempt, "status": "untagged", "passed": False,
                             "reason": "no parsable [PYTHON] block", "test_results": []}
                        done[(qid, attempt)] = v
                        journal.write(json.dumps(v) + "\n")
                        futures.append((s, None))
                        continue
                    job = PythonJob(stages=[("<solution>", s["code"])], limits=limits, needs=("selfinstruct_checker",),
                                    checker={"module": "selfinstruct_checker", "function": "run_tests",
                                             "args": {"tests": test_of[qid]["tests"]}})
                    futures.append((s, pool.submit(job)))
                for s, future in futures:
                    key = (s["id"], s["attempt"])
                    if future is not None:
                        r = future.result()
                        results = r.result if r.status == "passed" and isinstance(r.result, list) else []
                        ok = r.status == "passed" and bool(results) and all(x == "passed" for x in results)
                        v = {"id": s["id"], "attempt": s["attempt"], "status": r.status, "passed": ok,
                             "reason": r.reason if r.status != "passed" else
                             ("passed" if ok else next(x for x in results if x != "passed")),
                             "test_results": results, "cpu_seconds": round(r.cpu_seconds, 3)}
                        done[key] = v
                        journal.write(json.dumps(v) + "\n")
                        journal.flush()
                    v = done[key]
                    if v["status"] == "untagged":
                        stats["untagged"] += 1
                        continue
                    stats["solutions_run"] += 1
                    stats["passed" if v["passed"] else ("timed_out" if v["status"] == "timed out" else "failed")] += 1
                    if v["passed"] and s["id"] not in kept:
                        kept[s["id"]] = (s, v)
                        bar.update(1)
            bar.close()
            sandbox_mode = pool.mode
    finally:
        journal.close()
    rows = []
    for qid, (s, v) in kept.items():
        t = test_of[qid]
        rows.append({"id": qid, "question": t["question"], "tests": t["tests"], "solution": s["code"],
                     "attempt": s["attempt"], "shown_test": s["shown_test"], "test_results": v["test_results"],
                     "provenance": {"tests": {"model": t["model"], "prompt": t["prompt"], "seed": t["seed"]},
                                    "solution": {"model": s["model"], "prompt": s["prompt"], "seed": s["seed"]}}})
    write_jsonl(out / "selfinstruct.jsonl", rows)
    stats.update(questions=len(by_question), kept=len(rows), sandbox=sandbox_mode)
    return rows, stats


# The user turn of a training dialog: the solution prompt's instruction (Fig. 12) without its worked
# example. Measured on the demo model: with it, tuning made 85% of zero-shot MBPP answers properly
# tagged; with the bare question as the user turn, 0% (the model wrote the program and the closing
# tag but dropped the opening one on MBPP's prompt, which names the tags).
DIALOG_INSTRUCTION = ("Your task is to write a Python function to solve a programming problem.\n"
                      "The Python code must be between [PYTHON] and [/PYTHON] tags.")


def to_dialog(triplet: dict) -> dict:
    """A kept triplet as an instruct dialog: the solution instruction, the question and the test the
    solver saw from the user; the solution in [PYTHON] tags from the assistant."""
    test = triplet["tests"][triplet["shown_test"]].strip()
    user = f"{DIALOG_INSTRUCTION}\nProblem: {triplet['question']}\nTest: {test}"
    answer = f"[PYTHON]\n{triplet['solution'].rstrip()}\n[/PYTHON]"
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


# ----------------------------------------------------------------------------- the pipeline
def run_selfinstruct(cfg: SelfInstructConfig, backends: dict | None = None) -> dict:
    """Run (or resume) the four stages; returns the summary. `backends` maps stage names to backend
    objects (tests), else each stage's StageModel is opened."""
    if cfg.n_tests < 1 or cfg.n_solutions < 1 or cfg.question_prompts < 1:
        raise ConfigError("--tests, --solutions and --question-prompts must be at least 1")
    out = Path(cfg.out)
    # A run folder always continues the run it holds (its stages' caches make that cheap).
    run = open_run(out, cfg.settings(), True, kind="selfinstruct", header={"codelm_selfinstruct_run": RUN_VERSION})
    backends = dict(backends or {})
    opened: dict[tuple, object] = {}
    for stage in STAGES:
        if stage == "questions" and cfg.questions_file:
            backends[stage] = None
            continue
        if stage not in backends:
            spec = getattr(cfg, stage)
            key = (spec.backend, spec.model, spec.served_model, spec.chat)
            if key not in opened:  # one model used by several stages is loaded once
                opened[key] = spec.open(cfg.batch_size, cfg.api_key)
            backends[stage] = opened[key]
    for stage in STAGES:
        identity = backends[stage].identity() if backends[stage] is not None else {"file": cfg.questions_file}
        if run.setdefault("backends", {}).get(stage, identity) != identity:
            raise CodelmError(f"{out / 'run.json'}: stage {stage} ran with another backend or model "
                              f"({run['backends'][stage]}); use another --out folder")
        run["backends"][stage] = identity
    run["state"] = "running"
    write_json(out / "run.json", run)

    summary = {}
    questions, summary["questions"] = stage_questions(cfg, backends["questions"], out)
    tests, summary["tests"] = stage_tests(cfg, backends["tests"], out, questions)
    solutions, summary["solutions"] = stage_solutions(cfg, backends["solutions"], out, tests)
    kept, summary["execution"] = stage_execute(cfg, out, tests, solutions)
    write_jsonl(out / "dialogs.jsonl", [to_dialog(t) for t in kept])
    n_q = summary["questions"]["kept"]
    summary["yield"] = {"questions": n_q, "with_tests": summary["tests"]["with_tests"],
                        "with_a_tagged_solution": len({s["id"] for s in solutions if s["code"] is not None}),
                        "kept": len(kept), "kept_per_question": round(len(kept) / n_q, 4) if n_q else 0.0}
    write_json(out / "summary.json", summary)
    run["state"] = "done"
    write_json(out / "run.json", run)
    return summary


def selfinstruct_main(*, out: str, model: str | None = None, backend: str = "native", served_model: str | None = None,
                      questions_model: str | None = None, questions_backend: str | None = None,
                      questions_served_model: str | None = None, tests_model: str | None = None,
                      tests_backend: str | None = None, tests_served_model: str | None = None,
                      solutions_model: str | None = None, solutions_backend: str | None = None,
                      solutions_served_model: str | None = None, chat: bool = False, api_key: str | None = None,
                      question_prompts: int = 4, max_questions: int | None = None, questions_file: str | None = None,
                      tests: int = 5, solutions: int = 10, temperature: float | None = None, seed: int = 0,
                      batch_size: int | None = None, workers: int | None = None, sandbox: str = "auto",
                      timeout: float = 5.0, force: bool = False) -> dict:
    """Entry point of `codelm selfinstruct` (flags in codelm/cli.py): each stage's model, backend and served model
    default to `model`, `backend` and `served_model`; `chat` applies to every openai stage; `tests` and `solutions`
    are the counts kept and sampled per question. Returns the run's summary (the command line prints it)."""
    given = dict(questions=(questions_model, questions_backend, questions_served_model),
                 tests=(tests_model, tests_backend, tests_served_model),
                 solutions=(solutions_model, solutions_backend, solutions_served_model))

    def stage(name):
        stage_model, stage_backend, stage_served = given[name]
        stage_backend = stage_backend or backend
        return StageModel(backend=stage_backend, model=stage_model or model,
                          served_model=stage_served or served_model,
                          chat=chat and stage_backend == "openai")  # --chat: every openai stage

    cfg = SelfInstructConfig(
        out=out, questions=stage("questions"), tests=stage("tests"), solutions=stage("solutions"),
        question_prompts=question_prompts, max_questions=max_questions, questions_file=questions_file, n_tests=tests,
        n_solutions=solutions, seed=seed, batch_size=batch_size,
        api_key=api_key or os.environ.get("OPENAI_API_KEY"), workers=workers, sandbox=sandbox,
        timeout=timeout, progress=sys.stderr.isatty())
    if temperature is not None:
        cfg.question_temperature = cfg.solution_temperature = temperature
    claim_output(out, "selfinstruct", folder=True, force=force, what="run folder",
                 legacy=lambda p: (p / "run.json").exists())
    return run_selfinstruct(cfg)

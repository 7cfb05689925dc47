"""HumanEval+ and MBPP+ (EvalPlus): the reference solution's outputs on many inputs are the test.

Per task, a reference job computes the expected outputs inside the sandbox (and times the
reference, which sets the task's time limit); they are shipped to the workers once. A sample job
then runs the checker of evalplus_check.py against them: it stops at the first wrong input (the
verdict is known then), reports "base" when the original inputs pass and finishes only when the
extra ("plus") inputs pass too. Reference results are cached on disk (codelm.evaluate.refcache). `passed` is base and plus,
`base_passed` the base tests alone, as EvalPlus reports them.
"""

from __future__ import annotations

import hashlib
import marshal
from pathlib import Path

from codelm.benchdata import files
from codelm.benchdata import problems as benchdata
from codelm.evaluate import scoring
from codelm.evaluate.benchmarks.mbpp import mbpp_number
from codelm.evaluate.sandbox import PythonJob, RunResult
from codelm.evaluate.scoring import ScoreOptions, ScoringPlan

NAMES = ("humaneval+", "mbpp+")

CHECKER_KEY = "evalplus_check"
CHECKER_SOURCE = (Path(__file__).parent / "evalplus_check.py").read_text(encoding="utf-8")
# What the cached reference outputs depend on besides the data: the checker and the input
# conversions of this module (codelm.evaluate.refcache).
CHECKER_FINGERPRINT = hashlib.sha256(CHECKER_SOURCE.encode() + b"\0" + Path(__file__).read_bytes()).hexdigest()


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


# MBPP+ stores every input as JSON; these tasks take tuples, sets or complex numbers, so their
# inputs are converted back as EvalPlus does (task number -> conversion of one argument list).
_MBPP_INPUT_TYPES = {}
for _n in (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726, 740,
           744, 809):
    _MBPP_INPUT_TYPES[_n] = lambda a: [tuple(x) for x in a]
for _n in (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780):
    _MBPP_INPUT_TYPES[_n] = lambda a: [[tuple(y) for y in x] for x in a]
for _n in (75, 413, 444, 753):
    _MBPP_INPUT_TYPES[_n] = lambda a: [[tuple(y) for y in a[0]], a[1]]
for _n in (106, 750):
    _MBPP_INPUT_TYPES[_n] = lambda a: [a[0], tuple(a[1])]
for _n in (250, 405, 446, 617, 720, 763, 808):
    _MBPP_INPUT_TYPES[_n] = lambda a: [tuple(a[0]), a[1]]
for _n in (259, 401, 445):
    _MBPP_INPUT_TYPES[_n] = lambda a: [tuple(tuple(y) for y in x) for x in a]
for _n in (580, 615, 791):
    _MBPP_INPUT_TYPES[_n] = _tuples
_MBPP_INPUT_TYPES.update({
    115: lambda a: [[set(x) if isinstance(x, list) and x else {} for x in a[0]]],
    124: lambda a: [float(a[0]), complex(a[1])],
    252: lambda a: [complex(a[0])],
    278: lambda a: [tuple(tuple(x) if isinstance(x, list) else x for x in a[0])],
    307: lambda a: [tuple(a[0]), a[1], a[2]],
    722: lambda a: [{k: tuple(v) for k, v in a[0].items()}] + list(a[1:]),
})


def load_problems(benchmark: str, data_dir=None) -> list[dict]:
    return benchdata.load_problems(benchmark, data_dir)


def plan(benchmark: str, options: ScoreOptions) -> "EvalPlusBenchmark":
    key = benchdata.check_name(benchmark)
    found = EvalPlusBenchmark(key, load_problems(key, options.data_dir),
                              data_sha256=files.sha256_of(files.locate(key, options.data_dir)))
    found.early_exit = options.early_exit
    return found


def score(benchmark: str, samples, out=None, options: ScoreOptions = ScoreOptions()) -> dict:
    return scoring.score(plan(benchmark, options), samples, out, options)


class EvalPlusBenchmark(ScoringPlan):
    has_base = True

    def __init__(self, name: str, problems: list[dict], data_sha256: str | None = None):
        self.name = name
        self.dataset = "mbpp" if name == "mbpp+" else "humaneval"
        self.problems = {p["task_id"]: p for p in problems}
        # A sample stops at its first wrong input (its verdict is then known); False runs every
        # input of both parts first, for tests that the early exit changes no verdict.
        self.early_exit = True
        # Keys the on-disk cache of reference outputs (None: not cached).
        self.reference_identity = None if data_sha256 is None else \
            {"data_sha256": data_sha256, "checker": CHECKER_FINGERPRINT}

    def task_key(self, raw) -> str | None:
        if self.dataset == "mbpp":
            number = mbpp_number(raw)
            raw = f"Mbpp/{number}" if number is not None else None
        return raw if isinstance(raw, str) and raw in self.problems else None

    def inputs(self, problem: dict) -> dict:
        base = problem["base_input"]
        plus = problem["plus_input"] or base  # MBPP+ task 793 has no extra inputs
        convert = _MBPP_INPUT_TYPES.get(problem.get("mbpp_id")) if self.dataset == "mbpp" else None
        if convert is not None:
            base, plus = [convert(a) for a in base], [convert(a) for a in plus]
        return {"base": base, "plus": plus}

    def definitions(self, task_ids) -> dict:
        found = {CHECKER_KEY: ("module", CHECKER_SOURCE)}
        for task_id in task_ids:
            found[f"inputs:{task_id}"] = ("value", marshal.dumps(self.inputs(self.problems[task_id])))
        return found

    def code_of(self, sample: dict) -> str:
        # EvalPlus samples may carry the whole program as "solution" instead of a "completion".
        return sample["solution"] if isinstance(sample.get("solution"), str) else sample["completion"]

    def reference_job(self, problem: dict) -> PythonJob:
        return PythonJob(
            stages=[("<solution>", problem["prompt"] + problem["canonical_solution"])],
            checker={"module": CHECKER_KEY, "function": "reference_outputs",
                     "args": {"entry_point": problem["entry_point"],
                              "inputs": {"$ref": f"inputs:{problem['task_id']}"},
                              "output_not_none": self.dataset == "mbpp"
                              and problem["entry_point"] in {"check_str", "text_match_three", "text_starta_endb"}}},
            needs=(CHECKER_KEY, f"inputs:{problem['task_id']}"),
            int_max_str_digits=0, result_limit=1 << 28)

    def accept_reference(self, problem: dict, result: RunResult) -> dict:
        return {f"expected:{problem['task_id']}": ("value", result.result)}

    def sample_job(self, problem: dict, sample: dict) -> PythonJob:
        task_id = problem["task_id"]
        code = sample["solution"] if isinstance(sample.get("solution"), str) else problem["prompt"] + sample["completion"]
        return PythonJob(
            stages=[("<solution>", code)],
            checker={"module": CHECKER_KEY, "function": "check",
                     "args": {"entry_point": problem["entry_point"], "dataset": self.dataset,
                              "atol": problem.get("atol") or 0,
                              "inputs": {"$ref": f"inputs:{task_id}"}, "expected": {"$ref": f"expected:{task_id}"},
                              **({} if self.early_exit else {"early_exit": False})}},
            needs=(CHECKER_KEY, f"inputs:{task_id}", f"expected:{task_id}"),
            int_max_str_digits=0)

    @staticmethod
    def row_fields(result: RunResult, problem: dict) -> dict:
        reason = result.reason if result.status != "failed" else f"failed: {result.reason}"
        return {"passed": result.status == "passed", "result": reason,
                "base_passed": result.status == "passed" or bool(result.milestones.get("base"))}

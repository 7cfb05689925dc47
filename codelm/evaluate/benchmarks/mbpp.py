"""MBPP: the sample is a whole program; the test is `test_setup_code` then the three asserts.

The setup code goes after the solution: tasks 367 and 927 build their test data with the
solution's own classes.
"""

from __future__ import annotations

import re

from codelm.benchdata import problems as benchdata
from codelm.evaluate import scoring
from codelm.evaluate.benchmarks.humaneval import AssertBenchmark
from codelm.evaluate.scoring import ScoreOptions

NAMES = ("mbpp",)
_ID = re.compile(r"^(?:mbpp/)?(\d+)$", re.IGNORECASE)


def mbpp_number(raw) -> int | None:
    """11, "11", "Mbpp/11" and "MBPP/11" all name task 11."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        match = _ID.match(raw.strip())
        if match:
            return int(match.group(1))
    return None


class MbppBenchmark(AssertBenchmark):
    def task_key(self, raw) -> str | None:
        number = mbpp_number(raw)
        key = f"Mbpp/{number}"
        return key if number is not None and key in self.problems else None

    def solution_source(self, problem: dict, code: str) -> str:
        return code

    def test_stages(self, problem: dict) -> list[tuple[str, str]]:
        return [("<test>", problem["test"], True)]


def load_problems(benchmark: str, data_dir=None) -> list[dict]:
    return benchdata.load_problems(benchmark, data_dir)


def plan(benchmark: str, options: ScoreOptions) -> MbppBenchmark:
    key = benchdata.check_name(benchmark)
    return MbppBenchmark(key, load_problems(key, options.data_dir))


def score(benchmark: str, samples, out=None, options: ScoreOptions = ScoreOptions()) -> dict:
    return scoring.score(plan(benchmark, options), samples, out, options)

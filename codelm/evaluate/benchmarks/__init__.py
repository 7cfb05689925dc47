"""Benchmarks as scoring plans: `load_benchmark(name)` gives the problems of a benchmark and how its
samples become sandbox jobs (humaneval.py, mbpp.py, evalplus.py, multipl_e.py). The problems themselves
are read by codelm.benchdata.problems (re-exported here).
"""
from __future__ import annotations

import os

from codelm.benchdata import files
from codelm.benchdata.problems import (BENCHMARKS, check_name, list_benchmarks, load_problems,  # noqa: F401
                                       mbpp_task_id, load_multipl_e)
from codelm.evaluate.benchmarks.evalplus import EvalPlusBenchmark
from codelm.evaluate.benchmarks.humaneval import AssertBenchmark
from codelm.evaluate.benchmarks.mbpp import MbppBenchmark
from codelm.evaluate.benchmarks.multipl_e import MultiPLEBenchmark


def load_benchmark(name: str, data_dir: str | os.PathLike | None = None):
    """The scoring plan of benchmark `name`: its problems and how samples become sandbox jobs.

    Returns an object with `problems` (task_id -> problem), `task_key(raw_id)`, `definitions(ids)`,
    `reference_job(problem)`, `accept_reference(problem, result)`, `sample_job(problem, sample)`,
    `row_fields(result)` and `has_base` (see humaneval.py, mbpp.py and evalplus.py)."""
    if name.strip().lower().startswith("multipl-e-"):
        lang = name.strip().lower().removeprefix("multipl-e-")
        return MultiPLEBenchmark(lang, load_multipl_e(lang, data_dir))
    key = check_name(name)
    problems = load_problems(key, data_dir)
    if key in ("humaneval+", "mbpp+"):
        return EvalPlusBenchmark(key, problems, data_sha256=files.sha256_of(files.locate(key, data_dir)))
    if key == "mbpp":
        return MbppBenchmark(key, problems)
    return AssertBenchmark(key, problems)

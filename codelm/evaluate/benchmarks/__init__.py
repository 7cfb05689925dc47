"""One module per benchmark, each with the same functions (`NAMES`, `load_problems(benchmark,
data_dir)`, `plan(benchmark, options)`, `score(benchmark, samples, out, options)`), registered in the
table of codelm.evaluate.scorers: humaneval.py (and the infilling sets), mbpp.py, evalplus.py
(HumanEval+, MBPP+), multipl_e.py, apps.py, ds1000.py, gsm8k.py, lcc.py. The problems of the pinned
benchmarks are read by codelm.benchdata.problems (re-exported here).
"""
from __future__ import annotations

from codelm.benchdata.problems import (BENCHMARKS, check_name, list_benchmarks, load_problems,  # noqa: F401
                                       mbpp_task_id, load_multipl_e)

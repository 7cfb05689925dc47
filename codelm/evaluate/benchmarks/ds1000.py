"""DS-1000 (Lai et al. 2023): 1,000 data-science problems over seven Python libraries.

Not in the Code Llama paper; offered because users ask for it. Data: the 2024 reformatted release,
data/ds1000.jsonl.gz of github.com/xlang-ai/DS-1000 (the same rows as test.jsonl of the Hugging Face
dataset xlangai/DS-1000), one problem per line with prompt, reference_code, code_context (which
defines test_execution(solution) and sometimes test_string(solution)) and metadata (problem_id,
library, perturbation_type, ...). The original HKUNLP release (one folder per problem) is not read.
codelm does not download it (no pinned sha256 known here): put it in DATA_DIR/ds1000/.

Protocol, as DS-1000's own scripts: the prompt as given, greedy (pass@1), generation cut at
"</code>" or "# SOLUTION END"; the answer is then cleaned as DS-1000's postprocess does (text
after "</code>", "```" fences and "END SOLUTION" dropped, "<code>" removed). Scoring runs the
problem's own test program in the sandbox: code_context, then `code = <answer>`,
`test_execution(code)` and, when defined, `test_string(code)`; 120 s per problem as upstream.

The problems need numpy, pandas, scipy, scikit-learn, matplotlib, PyTorch or TensorFlow. A problem
whose imports are not installed here is skipped, and the summary says how many and for want of
what (`skipped`): its score is not folded into pass@k.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from codelm.benchdata.files import ExternalFile, locate_external
from codelm.errors import CodelmError, DataError
from codelm.evaluate import passk, scoring
from codelm.evaluate.sandbox import Limits, PythonJob
from codelm.evaluate.scoring import ScoreOptions, ScoringPlan
from codelm.evaluate.task import Protocol, Task
from codelm.files import iter_jsonl

SOURCE = ExternalFile(
    benchmark="DS-1000", folder="ds1000", names=("ds1000.jsonl.gz", "ds1000.jsonl", "test.jsonl"),
    # main branch; its commit id could not be read here
    url="https://github.com/xlang-ai/DS-1000/raw/main/data/ds1000.jsonl.gz",
    how="or test.jsonl of the Hugging Face dataset xlangai/DS-1000")
LIBRARY_MODULES = {"Numpy": "numpy", "Pandas": "pandas", "Scipy": "scipy", "Sklearn": "sklearn",
                   "Matplotlib": "matplotlib", "Pytorch": "torch", "Tensorflow": "tensorflow"}
STOP = ("</code>", "# SOLUTION END")
NAMES = ("ds1000",)
TIME_LIMIT = 120.0  # seconds per problem, DS-1000's test_ds1000.py
# One thread per library pool: CPU time then tracks wall time, and parallel jobs do not oversubscribe
# the cores; no GPU; matplotlib draws off-screen; TensorFlow keeps its start-up log to itself.
JOB_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
_IMPORT = re.compile(r"^[ \t]*(?:import[ \t]+([A-Za-z_]\w*)|from[ \t]+([A-Za-z_]\w*)[\w.]*[ \t]+import\b)", re.M)


# ----------------------------------------------------------------------------- data
def load_problems(benchmark: str = "ds1000", data_dir=None) -> list[dict]:
    path, _ = locate_external(SOURCE, data_dir)
    return read_problems(path)


def read_problems(path: Path) -> list[dict]:
    problems, seen = [], set()
    for lineno, row in iter_jsonl(path):
        for key in ("prompt", "reference_code", "code_context", "metadata"):
            if key not in row:
                raise DataError(f"{path}:{lineno}: missing field {key}")
        meta = row["metadata"]
        if not isinstance(meta, dict) or "problem_id" not in meta or "library" not in meta:
            raise DataError(f"{path}:{lineno}: metadata must hold problem_id and library")
        if "def test_execution" not in row["code_context"]:
            raise DataError(f"{path}:{lineno}: code_context defines no test_execution(solution)")
        task_id = f"DS-1000/{meta['problem_id']}"
        if task_id in seen:
            raise DataError(f"{path}:{lineno}: problem_id {meta['problem_id']} appears twice")
        seen.add(task_id)
        problems.append({"task_id": task_id, "prompt": row["prompt"], "reference_code": row["reference_code"],
                         "code_context": row["code_context"], "library": meta["library"], "metadata": meta})
    if not problems:
        raise DataError(f"{path}: no DS-1000 problems")
    return problems


def required_modules(problem: dict) -> set[str]:
    """Top-level modules the problem's test program imports (its library's included)."""
    found = {a or b for a, b in _IMPORT.findall(problem["code_context"])}
    library = LIBRARY_MODULES.get(problem["library"])
    return found | ({library} if library else set())


def missing_modules(problem: dict, installed=None) -> list[str]:
    """The problem's modules that cannot be imported here (`installed`: module -> bool, a cache)."""
    installed = {} if installed is None else installed
    missing = []
    for name in sorted(required_modules(problem)):
        if name not in installed:
            installed[name] = importlib.util.find_spec(name) is not None
        if not installed[name]:
            missing.append(name)
    return missing


# ----------------------------------------------------------------------------- protocol
def tasks(data_dir=None):
    return [Task(p["task_id"], p["prompt"], stop=STOP, meta={"library": p["library"]})
            for p in load_problems("ds1000", data_dir)]


def postprocess(task, text: str) -> str:
    """DS-1000's clean-up of an answer (models add tags and fences despite the prompt)."""
    code = text.split("</code>")[0].replace("```python", "")
    code = code.split("```")[0].split("\nEND SOLUTION")[0]
    return code.replace("<code>", "")


def protocols() -> dict:
    return {"ds1000": Protocol("ds1000", "ds1000", "ds1000", tasks, postprocess, max_new_tokens=1024,
                               paper="not in the paper (DS-1000, Lai et al. 2023)")}


# ----------------------------------------------------------------------------- scoring
def test_tail(problem: dict, code: str) -> str:
    """What DS-1000 appends to code_context: the answer as a string, then its checks."""
    tail = f"code = {code!r}\ntest_execution(code)\n"
    return tail + ("test_string(code)\n" if "test_string(" in problem["code_context"] else "")


def sample_job(problem: dict, code: str, time_limit: float = TIME_LIMIT) -> PythonJob:
    # code_context is the benchmark's own (trusted: compiled once per worker); the answer only ever
    # runs inside its test_execution. PyTorch and TensorFlow map gigabytes of address space on import.
    return PythonJob(stages=[("<ds1000-context>", problem["code_context"], True),
                             ("<ds1000-test>", test_tail(problem, code))],
                     limits=Limits(cpu_seconds=time_limit, wall_seconds=time_limit + 30, memory_mb=16384,
                                   processes=512, env=dict(JOB_ENV)))


def plan(benchmark: str, options: ScoreOptions) -> "Ds1000Plan":
    """`timeout`: seconds per problem (default 120, as DS-1000)."""
    return Ds1000Plan(benchmark, options)


def score(benchmark: str, samples, out=None, options: ScoreOptions = ScoreOptions()) -> dict:
    """Score a samples JSONL (task_id "DS-1000/N", completion = the answer snippet) in the sandbox."""
    return scoring.score(plan(benchmark, options), samples, out, options)


class Ds1000Plan(ScoringPlan):
    calibrated = False  # DS-1000's own limit per problem (TIME_LIMIT, or --timeout)
    rerun_timeouts = False

    def __init__(self, benchmark: str, options: ScoreOptions):
        self.name = benchmark
        self.path, self.sha256 = locate_external(SOURCE, options.data_dir)
        self.problems = {p["task_id"]: p for p in read_problems(self.path)}
        self.time_limit = TIME_LIMIT if options.timeout is None else float(options.timeout)
        self.journal_fields = {"time_limit": self.time_limit}
        self.skipped: dict = {}

    def select(self, samples: list[dict]) -> list[dict]:
        """The samples whose problem's libraries are installed here; the others are counted apart."""
        installed: dict[str, bool] = {}
        tasks = {s["key"] for s in samples}
        missing = {task_id: missing_modules(self.problems[task_id], installed) for task_id in tasks}
        runnable = [s for s in samples if not missing[s["key"]]]
        skipped_tasks = sorted((t for t, m in missing.items() if m), key=lambda t: int(t.split("/")[-1]))
        by_module: dict[str, int] = {}
        for task_id in skipped_tasks:
            for name in missing[task_id]:
                by_module[name] = by_module.get(name, 0) + 1
        if skipped_tasks:
            print(f"codelm: DS-1000: {len(skipped_tasks)} of {len(missing)} problems skipped, their libraries are "
                  f"not installed here ({', '.join(f'{m}: {n}' for m, n in sorted(by_module.items()))}); pass@k "
                  "covers the others", file=sys.stderr)
        if not runnable:
            raise CodelmError(f"DS-1000: none of the {len(missing)} problems can run here: install "
                              f"{', '.join(sorted(by_module))}")
        self.skipped = {"tasks": len(skipped_tasks), "samples": len(samples) - len(runnable),
                        "missing_modules": by_module, "task_ids": skipped_tasks}
        return runnable

    def sample_job(self, problem: dict, sample: dict) -> PythonJob:
        return sample_job(problem, sample["completion"], self.time_limit)

    def row_fields(self, result, problem: dict) -> dict:
        reason = result.reason if result.status != "failed" else f"failed: {result.reason}"
        return {"passed": result.status == "passed", "result": reason, "library": problem["library"]}

    def summary_fields(self, rows: list[dict], ks) -> dict:
        by_library = {}
        for library in sorted({r["library"] for r in rows}):
            counts = scoring.task_counts([r for r in rows if r["library"] == library])
            by_library[library] = {"tasks": len(counts), **passk.totals(counts, ks)}
        return {"time_limit_s": self.time_limit, "data": str(self.path), "data_sha256": self.sha256,
                "by_library": by_library, "skipped": self.skipped}

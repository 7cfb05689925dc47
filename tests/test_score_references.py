"""Every reference solution passes its own benchmark's tests in the sandbox (slow: whole benchmarks)."""

import json

import pytest

from codelm.evaluate.benchmarks import load_problems
from codelm.evaluate.scorers import score
from codelm.evaluate.scoring import ScoreOptions

EXPECTED = {
    "humaneval": 164,
    "humaneval+": 164,
    "mbpp": 974,
    "mbpp+": 378,
    "humaneval-infilling-single-line": 1033,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_reference_solution_passes(name, data_dir, tmp_path):
    problems = load_problems(name, data_dir)
    samples = tmp_path / "references.jsonl"
    with open(samples, "w") as f:
        for p in problems:
            f.write(json.dumps({"task_id": p["task_id"], "completion": p["canonical_solution"]}) + "\n")
    out = tmp_path / "results.jsonl"
    summary = score(name, samples, out, ScoreOptions(workers=2, data_dir=data_dir, ks="1", progress=False))
    failures = [(r["task_id"], r["result"]) for r in map(json.loads, out.read_text().splitlines()) if not r["passed"]]
    assert failures == []
    assert summary["passed"] == EXPECTED[name] and summary["pass@1"] == 1.0
    assert summary["reference_failures"] == {}
    if name.endswith("+"):
        assert summary["base"]["pass@1"] == 1.0  # base and plus tests both

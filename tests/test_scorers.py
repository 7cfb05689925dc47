"""The one benchmark interface (codelm.evaluate.scorers): every benchmark module has the same functions
with the same signatures, and `codelm score --benchmark X` serves every name of the table with the same
rows, summary, journal and resume behaviour (LCC, APPS and GSM8K-PAL on real fixture data here)."""
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from codelm.errors import CodelmError
from codelm.evaluate import protocols
from codelm.evaluate.scorers import SCORERS, benchmark_names, module_for, score
from codelm.evaluate.scoring import ScoreOptions, ScoringPlan

FIXTURES = Path(__file__).parent / "fixtures"


def test_every_benchmark_module_has_the_same_functions():
    for key, module in SCORERS.items():
        assert module.NAMES and all(module_for(name) is module for name in module.NAMES), key
        assert list(inspect.signature(module.load_problems).parameters) == ["benchmark", "data_dir"], key
        assert list(inspect.signature(module.plan).parameters) == ["benchmark", "options"], key
        assert list(inspect.signature(module.score).parameters) == ["benchmark", "samples", "out", "options"], key
    # every protocol is scored as a name of the table
    assert {p.benchmark for p in protocols._protocols().values()} <= set(benchmark_names())
    with pytest.raises(CodelmError, match="unknown benchmark 'nope'; valid names: humaneval, "):
        module_for("nope")


def test_plans_are_scoring_plans(data_dir):
    options = ScoreOptions(data_dir=str(FIXTURES))
    assert isinstance(SCORERS["lcc"].plan("lcc-python", options), ScoringPlan)
    assert isinstance(SCORERS["apps"].plan("apps", options), ScoringPlan)
    assert isinstance(SCORERS["humaneval"].plan("HumanEval", ScoreOptions(data_dir=data_dir)), ScoringPlan)


def codelm(*args):
    return subprocess.run([sys.executable, "-m", "codelm.cli", *args], capture_output=True, text=True)


def test_codelm_score_serves_lcc_with_the_common_outputs(tmp_path):
    rows = [json.loads(x) for x in (FIXTURES / "lcc" / "python.jsonl").read_text().splitlines()]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": f"LCC-python/{i}", "completion": "\n" + r["gt"] + "\nmore"})
                               + "\n" for i, r in enumerate(rows)))
    r = codelm("score", "--benchmark", "lcc-python", "--samples", str(samples), "--data-dir", str(FIXTURES), "--k", "1")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["benchmark"] == "lcc-python" and summary["pass@1"] == 1.0 and summary["bleu"] == pytest.approx(1.0)
    results = [json.loads(x) for x in Path(summary["results"]).read_text().splitlines()]
    assert [x["prediction"] for x in results] == [r["gt"] for r in rows]
    assert json.loads(Path(summary["summary"]).read_text())["per_task"][0]["task_id"] == "LCC-python/0"
    assert not Path(summary["results"] + ".partial").exists()
    again = codelm("score", "--benchmark", "lcc-python", "--samples", str(samples), "--data-dir", str(FIXTURES),
                   "--k", "1", "--resume")
    assert again.returncode == 0 and json.loads(again.stdout)["resumed"] == "already complete"


def test_codelm_score_serves_apps_and_refuses_an_unfinished_run(tmp_path):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": "APPS/0", "completion": "print(1)\n"}) + "\n")
    out = tmp_path / "results.jsonl"
    (tmp_path / "results.jsonl.partial").write_text("not a journal\n")
    args = ["score", "--benchmark", "apps", "--samples", str(samples), "--out", str(out), "--data-dir", str(FIXTURES),
            "--k", "1", "--workers", "1"]
    r = codelm(*args)
    assert r.returncode == 2 and "unfinished run: pass --resume" in r.stderr
    (tmp_path / "results.jsonl.partial").unlink()
    r = codelm(*args)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["passed"] == 0 and summary["time_limit_per_test_s"] == 4.0 and "distinct_programs" in summary
    assert json.loads(out.read_text())["result"].startswith("failed: WrongAnswer")


def test_gsm8k_pal_scores_through_the_sandbox_loop(tmp_path, data_dir):
    plan = SCORERS["gsm8k"].plan("gsm8k-pal", ScoreOptions(data_dir=data_dir))
    first, second = list(plan.problems.values())[:2]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in [
        (first["task_id"], f"def solution():\n    return {first['expected']}\n"),
        (second["task_id"], "def solution():\n    return -1\n"),
        (second["task_id"], "def solution():\n    while True:\n        pass\n")]))
    summary = score("gsm8k-pal", samples, tmp_path / "out.jsonl",
                    ScoreOptions(data_dir=data_dir, workers=2, ks=(1,), progress=False))
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, False, False]
    assert rows[1]["result"] == f"failed: answer '-1', expected {second['expected']}" and rows[2]["result"] == "timed out"
    assert summary["solve_rate"] == pytest.approx(1 / 3) and summary["timed_out"] == 1

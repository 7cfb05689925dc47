"""Reports: JSON + Markdown + PNG per run, suites with per-language bars, comparisons with a run or the paper."""
import json
import struct

import pytest

from codelm.cli import main
from codelm.errors import CodelmError
from codelm.evaluate import report
from codelm.evaluate.benchmarks import load_problems, multipl_e
from codelm.evaluate.eval import EvalConfig, run_eval
from codelm.evaluate.protocols import get_protocol
from codelm.generate.backends import Completion


class Oracle:
    """Right on even seeds, wrong on odd ones, and an endless loop for one chosen sample."""

    name, batch_size = "oracle", 16

    def __init__(self, answers, hang=None):
        self.answers, self.hang = answers, hang

    def identity(self):
        return {"backend": "oracle"}

    def generate(self, requests):
        out = []
        for r in requests:
            if self.hang is not None and (r.prompt, r.seed) == self.hang:
                out.append(Completion("\n    while True:\n        pass\n"))
            elif r.seed is None or r.seed % 2 == 0:
                out.append(Completion(self.answers[r.prompt]))
            else:
                out.append(Completion("\n    return None\n"))
        return out


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir_module):
    root = tmp_path_factory.mktemp("runs")
    tasks = get_protocol("humaneval").load_tasks(str(data_dir_module))[:2]
    problems = {p["task_id"]: p for p in load_problems("humaneval", str(data_dir_module))}
    answers = {t.prompt: "\n" + problems[t.task_id]["canonical_solution"] for t in tasks}
    run_eval(EvalConfig("humaneval", "oracle", n=10, limit=2, out=str(root / "sampled"), workers=2, timeout=1,
                        progress=False), backend=Oracle(answers, hang=(tasks[1].prompt, 4)))
    run_eval(EvalConfig("humaneval", "oracle", limit=2, out=str(root / "suite" / "greedy"), workers=2,
                        progress=False), backend=Oracle(answers))
    js = multipl_e.load_problems("js", data_dir_module)[0]
    body = ("  for (let i = 0; i < numbers.length; i++)\n    for (let j = i + 1; j < numbers.length; j++)\n"
            "      if (Math.abs(numbers[i] - numbers[j]) < threshold) return true;\n  return false;\n}")
    if not multipl_e.unavailable("js"):
        run_eval(EvalConfig("multipl-e-js", "oracle", limit=1, out=str(root / "suite" / "js"), workers=1,
                            progress=False), backend=Oracle({js["prompt"]: body}))
    return root


@pytest.fixture(scope="module")
def data_dir_module():
    import os
    from pathlib import Path

    d = os.environ.get("CODELM_DATA_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("benchmark data not found: set CODELM_DATA_DIR")
    return Path(d)


def test_run_report_json_markdown_and_plot(runs):
    rep = json.loads((runs / "sampled" / "report.json").read_text())
    assert rep["benchmark"] == "humaneval" and rep["samples"] == 20 and rep["tasks"] == 2
    # 5 of 10 right on the first task; on the second 4 right and one endless loop (seed 4).
    assert rep["scores"]["pass@1"] == pytest.approx((0.5 + 0.4) / 2) and rep["scores"]["pass@10"] == 1.0
    assert rep["timed_out"] == 1 and rep["timeouts"] == [{"task_id": "HumanEval/1", "sample": 4}]
    per_task = {r["task_id"]: r for r in rep["per_task"]}
    assert per_task["HumanEval/1"]["outcomes"]["timed out"] == 1 and per_task["HumanEval/0"]["c"] == 5
    md = (runs / "sampled" / "report.md").read_text()
    assert "| pass@1 | 45.0 |" in md and "| pass@10 | 100.0 |" in md
    assert "## Timeouts\n\n- HumanEval/1 (sample 4)" in md
    assert "| HumanEval/0 | 10 | 5 |" in md and "## Time" in md
    w, h = _png_size(runs / "sampled" / "passk.png")
    assert w > 100 and h > 100 and rep["plots"] == ["passk.png"]
    greedy = json.loads((runs / "suite" / "greedy" / "report.json").read_text())
    assert greedy["plots"] == [] and greedy["scores"] == {"pass@1": 1.0}


def test_suite_report_and_language_bars(runs):
    if multipl_e.unavailable("js"):
        pytest.skip(multipl_e.unavailable("js"))
    suite = report.write_suite(runs / "suite")
    assert suite["scores"] == {"humaneval": {"pass@1": 1.0}, "multipl-e-js": {"pass@1": 1.0}}
    assert suite["plots"] == ["multipl_e.png"] and _png_size(runs / "suite" / "multipl_e.png")[0] > 50
    assert "| multipl-e-js | 100.0 |" in (runs / "suite" / "suite.md").read_text()


def test_compare_with_paper_and_other_run(runs, capsys):
    assert main(["report", str(runs / "sampled"), "--compare", "paper", "--paper-model", "Code Llama 7B"]) == 0
    out = capsys.readouterr().out
    assert "| humaneval | pass@1 | 45.0 | 33.5 | +11.5 |" in out and "| humaneval | pass@10 | 100.0 | 59.6 | +40.4 |" in out
    print(report.report_main(str(runs / "sampled"), compare=str(runs / "suite" / "greedy"), paper_model="Code Llama 7B"))
    out = capsys.readouterr().out
    assert "| humaneval | pass@1 | 45.0 | 100.0 | -55.0 |" in out and "| humaneval | pass@10 | 100.0 | – | – |" in out
    with pytest.raises(CodelmError, match="paper-model"):
        report.report_main(str(runs / "sampled"), compare="paper", paper_model="GPT-9")


def test_paper_numbers_from_the_reference_doc():
    table = report.paper_numbers()
    assert table["Code Llama 7B"]["humaneval"] == {"pass@1": 33.5, "pass@10": 59.6, "pass@100": 85.9}
    assert table["Code Llama - Python 70B"]["mbpp"]["pass@1"] == 65.6
    assert table["Code Llama 7B"]["multipl-e-sh"] == {"pass@1": 12.0}
    assert table["Code Llama 13B"]["humaneval-infilling-random-span-spm"] == {"pass@1": 41.9}
    assert table["Code Llama 34B"]["gsm8k"] == {"pass@1": 32.7}


def test_unfinished_or_missing_runs_are_refused(tmp_path):
    with pytest.raises(CodelmError, match="not a codelm eval run"):
        report.load_run(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"state": "generating", "settings": {}}))
    with pytest.raises(CodelmError, match="--resume"):
        report.load_run(tmp_path)
    with pytest.raises(CodelmError, match="neither"):
        report.run_folders(tmp_path / "empty")


def test_a_suite_report_never_replaces_a_file_codelm_did_not_write(runs, capsys):
    """`codelm report DIR` writes DIR/suite.md: a suite.md of the user's is refused (one line, exit 2,
    untouched) unless --force; codelm's own earlier suite.md is rewritten without it."""
    mine = runs / "suite" / "suite.md"
    mine.write_text("my notes\n")
    assert main(["report", str(runs / "suite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "suite.md" in err[0] and "--force" in err[0]
    assert mine.read_text() == "my notes\n"
    assert main(["report", str(runs / "suite"), "--force"]) == 0
    assert mine.read_text().startswith("# Evaluation suite")
    assert main(["report", str(runs / "suite")]) == 0  # its own earlier output

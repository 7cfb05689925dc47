"""`codelm selfinstruct`: the four stages end to end, execution filtering, containment, resume.

The scripted backend answers as a model would, from the prompt it is sent (its answers are
written for this test, not recorded from a model): questions with a duplicate, tests in [TESTS]
tags (and one question it writes no tests for), solutions in [PYTHON] tags: wrong ones, untagged
prose, one fitted to the visible test only, unsafe ones and correct ones. A second test runs the
pipeline over HTTP against a real `codelm serve` with a tiny model.
"""
import json
import re

import pytest
import torch
from helpers import make_tiny_bpe

from codelm.errors import CodelmError
from codelm.evaluate.sandbox import namespaces_available
from codelm.generate.backends import Completion
from codelm.selfinstruct import (SEED_QUESTIONS, SelfInstructConfig, StageModel, parse_questions, questions_prompt,
                                 run_selfinstruct, solution_prompt, unit_tests_prompt)

Q_ADD = "Write a function add(a, b) that returns the sum of two numbers."
Q_REV = "Write a function rev(s) that reverses a string."
Q_SQUARE = "Write a function square(x) that returns x squared."
Q_SPIN = "Write a function spin() that returns 1."
Q_UNSAFE = "Write a function ok() that returns True."
Q_HAIKU = "Write a haiku about lists."

TESTS = {
    Q_ADD: ["add(1, 2) == 3", "add(-1, 1) == 0", "add(0, 0) == 0"],
    Q_REV: ["rev('abc') == 'cba'", "rev('') == ''"],
    Q_SQUARE: ["square(2) == 4", "square(3) == 9", "square(0) == 0"],
    Q_SPIN: ["spin() == 1"],
    Q_UNSAFE: ["ok() is True"],
}


def solutions(host_file, spin=True):
    return {
        Q_ADD: ["def add(a, b):\n    return a - b", "def add(a, b):\n    return a + b"],
        Q_REV: [None, "def rev(s):\n    return s[::-1]"],
        # Fitted to one test: passes what it was shown, fails the hidden tests.
        Q_SQUARE: ["def square(x):\n    return 4",
                   "def square(x):\n    return x * x"],
        Q_SPIN: ["def spin():\n    while True:\n        pass" if spin else "def spin():\n    return 2"] * 2,
        Q_UNSAFE: ["import os\nos._exit(0)",  # leaves before the tests could fail: must not pass
                   f"open({str(host_file)!r}, 'w').write('escaped')\ndef ok():\n    return False",
                   "def ok():\n    return True"],
    }


class ScriptedBackend:
    name = "scripted"
    batch_size = 2

    def __init__(self, host_file, label="scripted-model", fail_after=None, spin=True):
        self.label, self.fail_after, self.calls = label, fail_after, 0
        self.solutions = solutions(host_file, spin)

    def identity(self):
        return {"backend": "scripted", "model": self.label}

    def generate(self, requests):
        if self.fail_after is not None and self.calls + len(requests) > self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += len(requests)
        return [Completion(self._answer(r)) for r in requests]

    def _answer(self, r):
        if "programming interview questions" in r.prompt:
            if r.seed == 0:
                return f"11. {Q_ADD}\n12. {Q_REV}\n13. {Q_ADD}\n14. {Q_SQUARE}\n\n[INST] and more"
            return f"11. {Q_SPIN}\n12.  {Q_REV.replace(' a ', '  a ')}\n13. {Q_UNSAFE}\n14. {Q_HAIKU}\n"
        question = re.findall(r"Problem: (.*)", r.prompt)[-1]
        if "write 5 tests" in r.prompt:
            if question not in TESTS:
                return "Tests do not apply to poems."
            body = "".join(f"# Test case {i}:\nassert {t}\n" for i, t in enumerate(TESTS[question], 1))
            return f"[TESTS]\n{body}[/TESTS]\n"
        attempts = self.solutions[question]
        code = attempts[min(r.seed, len(attempts) - 1)]
        return "I would rather explain it in words." if code is None else f"[PYTHON]\n{code}\n[/PYTHON]\n"


def _config(out, **kw):
    cfg = SelfInstructConfig(out=str(out), question_prompts=2, n_solutions=3, timeout=1.0, workers=2,
                             progress=False, solution_temperature=0.0)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _backends(b):
    return {"questions": b, "tests": b, "solutions": b}


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prompts_are_the_papers():
    p = questions_prompt(chat=False)
    assert p.startswith("[INST] Write 50 programming interview questions of easy and medium complexity.")
    assert p.endswith(f"[/INST]\n1. {SEED_QUESTIONS[0]}\n" + "".join(f"{i}. {q}\n" for i, q in
                                                                    enumerate(SEED_QUESTIONS[1:], 2)))
    t = unit_tests_prompt("Q?", chat=False)
    assert "The tests must be between [TESTS] and [/TESTS] tags." in t and t.endswith("[INST] Problem: Q?\n[/INST]\n")
    s = solution_prompt("Q?", "assert f(1) == 2\n", chat=False)
    assert s.endswith("[INST] Problem: Q?\nTest: assert f(1) == 2\n[/INST]\n")
    assert "[INST]" not in solution_prompt("Q?", "assert f(1) == 2", chat=True)
    assert parse_questions("11. A\n    continued\n12) B\n\n13. after the list", chat=False) == ["A continued", "B"]
    assert parse_questions(f"1. {SEED_QUESTIONS[0]}\n2. New one", chat=True) == ["New one"]


def test_pipeline_end_to_end(tmp_path):
    host_file = tmp_path / "escaped.txt"
    backend = ScriptedBackend(host_file)
    summary = run_selfinstruct(_config(tmp_path / "run"), _backends(backend))
    out = tmp_path / "run"
    # Stage 1: 8 generated, 2 exact duplicates (one differs only in spaces).
    assert summary["questions"] == {"prompts": 2, "generated": 8, "duplicates": 2, "unique": 6, "kept": 6,
                                    "from_cache": 0}
    # Stage 2: tests parsed for all but the haiku.
    tests = {t["question"]: t for t in _read(out / "tests.jsonl")}
    assert tests[Q_ADD]["tests"] == [f"assert {t}\n" for t in TESTS[Q_ADD]]
    assert tests[Q_HAIKU]["tests"] == [] and summary["tests"]["with_tests"] == 5
    assert summary["tests"]["tests_parsed"] == 10
    # Stage 3: each prompt shows the question and exactly one of its tests.
    sols = _read(out / "solutions.jsonl")
    assert len(sols) == 5 * 3
    for s in sols:
        shown = tests[[q for q in tests if tests[q]["id"] == s["id"]][0]]["tests"]
        assert sum(t.strip() in s["prompt"] for t in shown) == 1 or len(shown) == 1
        assert s["prompt"].count("Test: ") == 2  # the worked example's and this question's
    # Stage 4: first passing solution kept; wrong, fitted, untagged, looping and unsafe ones rejected.
    kept = {k["question"]: k for k in _read(out / "selfinstruct.jsonl")}
    assert set(kept) == {Q_ADD, Q_REV, Q_SQUARE, Q_UNSAFE}
    assert kept[Q_ADD]["attempt"] == 1 and kept[Q_ADD]["solution"] == "def add(a, b):\n    return a + b\n"
    assert kept[Q_ADD]["test_results"] == ["passed"] * 3
    assert kept[Q_UNSAFE]["attempt"] == 2
    assert kept[Q_ADD]["provenance"]["solution"]["model"] == backend.identity()
    verdicts = {(v["id"], v["attempt"]): v for v in _read(out / "verdicts.jsonl")}
    ids = {q: t["id"] for q, t in tests.items()}
    assert verdicts[(ids[Q_ADD], 0)]["reason"].startswith("failed: AssertionError")
    assert verdicts[(ids[Q_REV], 0)]["status"] == "untagged"
    fitted = verdicts[(ids[Q_SQUARE], 0)]
    assert fitted["passed"] is False and fitted["test_results"][0] == "passed" and fitted["status"] == "passed"
    assert all(verdicts[(ids[Q_SPIN], j)]["status"] == "timed out" for j in range(3))
    assert verdicts[(ids[Q_UNSAFE], 0)]["status"] == "failed" and not verdicts[(ids[Q_UNSAFE], 0)]["passed"]
    assert not verdicts[(ids[Q_UNSAFE], 1)]["passed"]
    if namespaces_available()[0]:
        assert not host_file.exists(), "a solution wrote to the host's file system"
    # Dialogs for instruct training, and the counts.
    dialogs = _read(out / "dialogs.jsonl")
    assert len(dialogs) == 4 and dialogs[0]["messages"][1]["content"].startswith("[PYTHON]\n")
    first = kept[dialogs[0]["messages"][0]["content"].split("Problem: ")[1].split("\n")[0]]
    assert dialogs[0]["messages"][0]["content"].endswith(f"Test: {first['tests'][first['shown_test']].strip()}")
    assert dialogs[0]["messages"][1]["content"] == f"[PYTHON]\n{first['solution'].rstrip()}\n[/PYTHON]"
    ex = summary["execution"]
    assert ex["kept"] == 4 and ex["untagged"] == 1 and ex["timed_out"] == 3
    assert summary["yield"]["kept"] == 4 and summary["yield"]["questions"] == 6


def test_resume_after_a_kill_generates_nothing_twice(tmp_path):
    host_file = tmp_path / "escaped.txt"
    reference = run_selfinstruct(_config(tmp_path / "ref"), _backends(ScriptedBackend(host_file, spin=False)))
    total_calls = 2 + 6 + 15
    # Dies in the middle of the solutions stage.
    killed = ScriptedBackend(host_file, fail_after=2 + 6 + 7, spin=False)
    with pytest.raises(KeyboardInterrupt):
        run_selfinstruct(_config(tmp_path / "run"), _backends(killed))
    assert not (tmp_path / "run" / "selfinstruct.jsonl").exists()
    again = ScriptedBackend(host_file, spin=False)
    summary = run_selfinstruct(_config(tmp_path / "run"), _backends(again))
    assert killed.calls + again.calls == total_calls
    assert summary["solutions"]["from_cache"] == killed.calls - 8
    for key in ("questions", "tests", "solutions"):
        assert {k: v for k, v in summary[key].items() if k != "from_cache"} == \
               {k: v for k, v in reference[key].items() if k != "from_cache"}
    assert summary["execution"] == reference["execution"]
    # A kill during execution: the journal (with a torn last line) is continued, nothing regenerated.
    journal = tmp_path / "run" / "verdicts.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    idle = ScriptedBackend(host_file, fail_after=0, spin=False)
    assert run_selfinstruct(_config(tmp_path / "run"), _backends(idle))["execution"] == reference["execution"]
    assert _read(tmp_path / "run" / "selfinstruct.jsonl") == _read(tmp_path / "ref" / "selfinstruct.jsonl")
    assert len(_read(journal)) == len(_read(tmp_path / "ref" / "verdicts.jsonl"))  # no torn line left behind


def test_other_settings_or_model_in_the_same_folder_are_refused(tmp_path):
    b = ScriptedBackend(tmp_path / "x", spin=False)
    run_selfinstruct(_config(tmp_path / "run"), _backends(b))
    with pytest.raises(CodelmError, match="other settings"):
        run_selfinstruct(_config(tmp_path / "run", n_solutions=4), _backends(b))
    with pytest.raises(CodelmError, match="another backend or model"):
        run_selfinstruct(_config(tmp_path / "run"), _backends(ScriptedBackend(tmp_path / "x", label="other",
                                                                              spin=False)))


def test_against_a_real_codelm_serve(tmp_path):
    """Stage 1 scripted, stages 2 and 3 over HTTP (chat and completion routes) on a tiny model."""
    from codelm.model.config import ModelConfig
    from codelm.model.llama import Transformer
    from codelm.serve import start_server

    tok = make_tiny_bpe()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size,
                                    multiple_of=16, max_seq_len=1024)).eval()
    server, _ = start_server(model, tok, "tiny")
    host, port = server.server_address[:2]
    try:
        cfg = _config(tmp_path / "run", n_solutions=2,
                      max_new_tokens={"questions": 16, "tests": 16, "solutions": 16})
        cfg.tests = StageModel(backend="openai", model=f"http://{host}:{port}/v1", chat=True)
        cfg.solutions = StageModel(backend="openai", model=f"http://{host}:{port}/v1")
        summary = run_selfinstruct(cfg, {"questions": ScriptedBackend(tmp_path / "x")})
    finally:
        server.shutdown()
        server.server_close()
    tests = _read(tmp_path / "run" / "tests.jsonl")
    assert len(tests) == 6 and all(t["model"]["backend"] == "openai" and t["model"]["chat"] for t in tests)
    assert all("[INST]" not in t["prompt"] for t in tests)  # chat route: the server lays out [INST]
    # A random tiny model writes no parsable tests, so nothing reaches execution; the counts say so.
    assert summary["tests"]["with_tests"] == sum(bool(t["tests"]) for t in tests)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["state"] == "done" and run["backends"]["solutions"]["url"] == f"http://{host}:{port}"


def test_questions_from_a_file_skip_stage_one(tmp_path):
    qfile = tmp_path / "q.txt"
    qfile.write_text(f"{Q_ADD}\n\n{Q_ADD}\n{Q_HAIKU}\n")
    b = ScriptedBackend(tmp_path / "x")
    summary = run_selfinstruct(_config(tmp_path / "run", questions_file=str(qfile)), {"tests": b, "solutions": b})
    assert summary["questions"]["generated"] == 3 and summary["questions"]["duplicates"] == 1
    assert summary["yield"]["kept"] == 1 and not (tmp_path / "run" / "cache-questions.jsonl").exists()
    with pytest.raises(CodelmError, match="not found"):
        run_selfinstruct(_config(tmp_path / "run2", questions_file=str(tmp_path / "missing.txt")),
                         {"tests": b, "solutions": b})


def test_cli_errors_are_one_line(tmp_path, capsys):
    from codelm.cli import main

    assert main(["selfinstruct", "--out", str(tmp_path / "run")]) == 2
    assert "no model for a stage" in capsys.readouterr().err
    assert main(["selfinstruct", "--out", str(tmp_path / "run2"), "--model", str(tmp_path), "--chat"]) == 2
    # Native stages ignore --chat; the bad checkpoint is what is reported.
    assert "neither config.json" in capsys.readouterr().err

"""APPS, DS-1000 and LCC: loaders on hand-made fixtures in the public formats, scoring, `codelm eval` end to end.

The real files are not here (no internet): tests/fixtures/{apps,ds1000,lcc}/ hold a few rows written
for these tests in each dataset's public format.
"""
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from codelm.errors import CodelmError, ConfigError, DataError
from codelm.benchdata import files as datasets
from codelm.evaluate.benchmarks import apps, apps_check, ds1000, lcc
from codelm.evaluate.eval import EvalConfig, run_eval
from codelm.evaluate.protocols import get_protocol
from codelm.evaluate.scoring import ScoreOptions
from codelm.generate.backends import Completion

FIXTURES = Path(__file__).parent / "fixtures"


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n" for line in lines))
    return path


def fixture_rows(name):
    return [json.loads(x) for x in (FIXTURES / name).read_text().splitlines()]


def samples_file(tmp_path, rows):
    return write_lines(tmp_path / "samples.jsonl", [{"sample": i, **r} for i, r in enumerate(rows)])


# ----------------------------------------------------------------------------- APPS: data and prompt
def test_apps_loader_reads_the_public_format():
    problems = apps.load_problems("apps", FIXTURES)
    assert [p["task_id"] for p in problems] == ["APPS/0", "APPS/1", "APPS/2", "APPS/3", "APPS/4"]
    by_id = {p["task_id"]: p for p in problems}
    assert by_id["APPS/0"]["fn_name"] is None and by_id["APPS/0"]["test_count"] == 3
    assert by_id["APPS/1"]["fn_name"] == "reverse_words" and not by_id["APPS/1"]["use_class"]
    assert by_id["APPS/2"]["use_class"] and by_id["APPS/4"]["test_count"] == 0
    assert apps.tests_of(by_id["APPS/1"]) == {"inputs": [["hello world"], ["a b c"], ["single"]],
                                              "outputs": [["world hello"], ["c b a"], ["single"]]}
    assert [p["task_id"] for p in apps.load_problems("apps-introductory", FIXTURES)] == ["APPS/0", "APPS/3", "APPS/4"]
    # The problem without test cases is no task: it could only ever pass.
    tasks = get_protocol("apps").load_tasks(str(FIXTURES))
    assert [t.task_id for t in tasks] == ["APPS/0", "APPS/1", "APPS/2", "APPS/3"]
    assert [t.task_id for t in get_protocol("apps-competition").load_tasks(str(FIXTURES))] == ["APPS/2"]


@pytest.mark.parametrize("bad,message", [
    ("{not json\n", "malformed JSON"),
    ({"problem_id": 9, "question": "q", "input_output": "", "url": ""}, "missing field difficulty"),
    ({"problem_id": 9, "question": "q", "input_output": "{oops", "difficulty": "interview"},
     "input_output is not valid JSON"),
    ({"problem_id": 9, "question": "q", "difficulty": "interview",
      "input_output": json.dumps({"inputs": ["1"], "outputs": []})}, "1 inputs but 0 outputs"),
    ({"problem_id": 9, "question": "q", "input_output": "", "difficulty": "easy"}, "difficulty 'easy'"),
    ({"problem_id": 0, "question": "q", "input_output": "", "difficulty": "interview"}, "problem_id 0 appears twice"),
])
def test_apps_bad_rows_name_the_file_and_line(tmp_path, bad, message):
    good = (FIXTURES / "apps" / "test.jsonl").read_text().splitlines()[0] + "\n"
    path = write_lines(tmp_path / "apps" / "test.jsonl", [good, bad])
    with pytest.raises(DataError, match=f"{path}:2: .*{message}"):
        apps.load_problems("apps", tmp_path)


def test_missing_data_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CODELM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CODELM_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="codeparrot/apps.*DATA_DIR/apps/"):
        apps.load_problems("apps")
    with pytest.raises(DataError, match="does not exist"):
        ds1000.load_problems("ds1000", tmp_path / "nowhere")


def test_a_pinned_sum_is_checked(tmp_path):
    path = write_lines(tmp_path / "thing" / "x.jsonl", ["{}\n"])
    spec = datasets.ExternalFile("thing", "thing", ("x.jsonl",), "https://example.org/x.jsonl", sha256="0" * 64)
    with pytest.raises(DataError, match="does not match the pinned"):
        datasets.locate_external(spec, tmp_path)
    got = datasets.sha256_of(path)
    assert datasets.locate_external(datasets.ExternalFile("thing", "thing", ("x.jsonl",), "u", sha256=got),
                                    tmp_path) == (path, got)


APPS_1_PROMPT_TAIL = """'''

QUESTION:
Return the words of the sentence s in reverse order, separated by single spaces.

reverse_words("hello world") == "world hello"
def reverse_words(s):
Your code should use the provided function signature.
ANSWER:
'''
"""


def test_apps_prompt_is_two_shots_then_the_question():
    problems = {p["task_id"]: p for p in apps.load_problems("apps", FIXTURES)}
    text = apps.prompt(problems["APPS/1"])
    assert text.count("QUESTION:\n") == 3 and text.count("ANSWER:\n'''\n") == 3
    assert text.startswith("QUESTION:\nYou are given n integers.")
    assert "Your code should read from and write to standard IO.\nANSWER:" in text  # the first shot's guide
    assert text.endswith(APPS_1_PROMPT_TAIL)
    assert apps.prompt(problems["APPS/0"]).endswith(
        "Input\n1 2\n\nOutput\n3\nYour code should read from and write to standard IO.\nANSWER:\n'''\n")
    task = get_protocol("apps").load_tasks(str(FIXTURES))[0]
    assert apps.postprocess(task, "print(1)\n'''\n\nQUESTION:\nmore") == "print(1)\n"
    assert apps.postprocess(task, "Sure:\n```python\nprint(2)\n```\nDone") == "print(2)\n"


def test_apps_output_comparison():
    assert apps_check.stdout_matches("3\n", "3\n") and apps_check.stdout_matches("  3  \n\n", "3")
    assert apps_check.stdout_matches("1  2\n3\n", "1 2\n3\n")  # spaces inside a line
    assert apps_check.stdout_matches("2.5000001\n", "2.5\n") and not apps_check.stdout_matches("2.51\n", "2.5\n")
    assert apps_check.stdout_matches("a\nb\n", ["a", "b"])
    assert not apps_check.stdout_matches("2\n1\n", "1\n2\n")  # order matters (APPS's set fallback does not)
    assert not apps_check.stdout_matches("", "0\n") and not apps_check.stdout_matches("nan\n", "1\n")
    assert apps_check.call_matches((1, 2), [[1, 2]]) and apps_check.call_matches([1, 2], [1, 2])
    assert apps_check.call_matches("x", ["x"]) and not apps_check.call_matches(1, [1, 2])
    assert apps_check.call_matches({1: [2]}, apps_check._int_keys({"1": [2]}))


# ----------------------------------------------------------------------------- APPS: scoring in the sandbox
def test_apps_scoring_in_the_sandbox(tmp_path):
    problems = {p["task_id"]: p for p in apps.load_problems("apps", FIXTURES)}
    cases = [  # (task, program, passed, result starts with)
        ("APPS/0", problems["APPS/0"]["solution"], True, "passed"),
        ("APPS/0", "import sys\nprint(sum(map(int, sys.stdin.buffer.read().split())))\n", True, "passed"),
        ("APPS/0", "import os\na, b = map(int, open(0).read().split())\nos.write(1, b'%d\\n' % (a + b))\n", True,
         "passed"),
        ("APPS/0", "print(1)\n", False, "failed: WrongAnswer: wrong answer on test 1 of 3"),
        ("APPS/0", "a, b = map(int, input().split())\nprint(a + b if a < 100 else 0)\n", False,
         "failed: WrongAnswer: wrong answer on test 3 of 3"),
        ("APPS/0", "print(int(input()) // 0)\n", False, "failed: RuntimeFailure: test 1 of 3: ValueError"),
        ("APPS/0", "import sys\nprint(3)\nsys.exit(0)\n", False, "failed: WrongAnswer: wrong answer on test 2"),
        ("APPS/0", "while True:\n    pass\n", False, "timed out"),
        # A program that ignores the per-test alarm is stopped by the job's own CPU limit.
        ("APPS/0", "import signal\nsignal.signal(signal.SIGPROF, signal.SIG_IGN)\nwhile True:\n    pass\n", False,
         "timed out"),
        ("APPS/0", "print(\n", False, "failed: SyntaxError"),
        ("APPS/1", problems["APPS/1"]["solution"], True, "passed"),
        ("APPS/1", "def reverse_words(s):\n    return s\n", False, "failed: WrongAnswer: wrong answer on test 1 of 3"),
        ("APPS/1", "def other(s):\n    return s\n", False, "failed: RuntimeFailure: the program defines no function"),
        ("APPS/2", problems["APPS/2"]["solution"], True, "passed"),
        ("APPS/3", problems["APPS/3"]["solution"], True, "passed"),  # threads joined, mean within 1e-5
    ]
    path = samples_file(tmp_path, [{"task_id": t, "completion": code} for t, code, _, _ in cases])
    summary = apps.score("apps", path, tmp_path / "results.jsonl", ScoreOptions(data_dir=FIXTURES, workers=2, timeout=0.5, ks=(1,), progress=False))
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    for (task_id, code, passed, result), row in zip(cases, rows):
        assert (row["passed"], row["result"][:len(result)]) == (passed, result), (code, row["result"])
    assert rows[4]["tests_passed"] == 2 and rows[4]["tests"] == 3
    assert summary["timed_out"] == 2 and summary["passed"] == sum(c[2] for c in cases)
    assert summary["data_sha256"] == datasets.sha256_of(FIXTURES / "apps" / "test.jsonl")
    assert set(summary["by_difficulty"]) == {"introductory", "interview", "competition"}
    # A sample for the problem without test cases is refused, not passed.
    bad = samples_file(tmp_path, [{"task_id": "APPS/4", "completion": "pass\n"}])
    with pytest.raises(DataError, match="unknown task_id 'APPS/4'"):
        apps.score("apps", bad, tmp_path / "r2.jsonl", ScoreOptions(data_dir=FIXTURES, workers=1, progress=False))


# ----------------------------------------------------------------------------- DS-1000
def test_ds1000_loader_and_bad_rows(tmp_path):
    problems = ds1000.load_problems("ds1000", FIXTURES)
    assert [(p["task_id"], p["library"]) for p in problems] == [("DS-1000/0", "Numpy"), ("DS-1000/1", "Tensorflow")]
    assert ds1000.required_modules(problems[0]) == {"copy", "io", "tokenize", "numpy"}
    assert ds1000.required_modules(problems[1]) == {"tensorflow"}
    good = (FIXTURES / "ds1000" / "ds1000.jsonl").read_text().splitlines()[0] + "\n"
    row = json.loads(good)
    for broken, message in [({k: v for k, v in row.items() if k != "code_context"}, "missing field code_context"),
                            ({**row, "metadata": {"library": "Numpy"}}, "metadata must hold problem_id"),
                            ({**row, "code_context": "x = 1\n"}, "code_context defines no test_execution")]:
        path = write_lines(tmp_path / "ds1000" / "ds1000.jsonl", [good, broken])
        with pytest.raises(DataError, match=f"{path}:2: {message}"):
            ds1000.load_problems("ds1000", tmp_path)


def test_ds1000_postprocess_as_upstream():
    post = ds1000.postprocess
    assert post(None, "result = a.sum(axis=1)\n</code>\nEND SOLUTION\n<code>") == "result = a.sum(axis=1)\n"
    assert post(None, "```python\nresult = 1\n```\ntext") == "\nresult = 1\n"
    assert post(None, "<code>result = 2\nEND SOLUTION") == "result = 2"


def test_ds1000_scoring_runs_the_problems_own_tests(tmp_path):
    cases = [("DS-1000/0", "result = a.sum(axis=1)\n", True, "passed"),
             ("DS-1000/0", "result = a.sum(axis=0)\n", False, "failed: AssertionError"),
             ("DS-1000/0", "result = np.array([sum(r) for r in a])\n", False,   # right values, but test_string
              "failed: AssertionError: the answer must not loop"),
             ("DS-1000/0", "result = undefined_name\n", False, "failed: NameError"),
             ("DS-1000/1", "result = x * 2\n", None, None)]
    path = samples_file(tmp_path, [{"task_id": t, "completion": c} for t, c, _, _ in cases])
    summary = ds1000.score("ds1000", path, tmp_path / "results.jsonl", ScoreOptions(data_dir=FIXTURES, workers=2, ks=(1,), progress=False))
    results = (tmp_path / "results.jsonl").read_text().splitlines()
    rows = {(r["task_id"], r["sample"]): r for r in map(json.loads, results)}
    for i, (task_id, _, passed, result) in enumerate(cases[:4]):
        assert rows[(task_id, i)]["passed"] == passed and rows[(task_id, i)]["result"].startswith(result)
    assert summary["by_library"]["Numpy"] == {"tasks": 1, "pass@1": pytest.approx(0.25)}
    if importlib.util.find_spec("tensorflow") is None:  # the usual case here: counted apart, not failed
        assert ("DS-1000/1", 4) not in rows and summary["samples"] == 4
        assert summary["skipped"] == {"tasks": 1, "samples": 1, "missing_modules": {"tensorflow": 1},
                                      "task_ids": ["DS-1000/1"]}


# ----------------------------------------------------------------------------- LCC
def test_lcc_loader_and_bad_rows(tmp_path):
    problems = lcc.load_problems("python", FIXTURES)
    assert [p["task_id"] for p in problems] == ["LCC-python/0", "LCC-python/1", "LCC-python/2"]
    assert problems[0]["gt"] == "        return json.load(f)"
    for broken, message in [("[1]\n", "expected a JSON object"), ({"context": "x"}, "missing field gt"),
                            ({"context": 1, "gt": "y"}, "field context must be a string"),
                            ({"context": "x", "gt": "  "}, "field gt is blank")]:
        path = write_lines(tmp_path / "lcc" / "java.jsonl", [{"context": "a\n", "gt": "b"}, broken])
        with pytest.raises(DataError, match=f"{path}:2: {message}"):
            lcc.load_problems("java", tmp_path)


def test_lcc_reads_parquet_when_pyarrow_is_installed(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = fixture_rows("lcc/python.jsonl")
    (tmp_path / "lcc").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "lcc" / "csharp.parquet")
    assert [p["gt"] for p in lcc.load_problems("csharp", tmp_path)] == [r["gt"] for r in rows]


def test_lcc_metrics_on_hand_cases():
    assert lcc.first_line("\n\n    return a\nnext()") == "    return a" and lcc.first_line("\n  \n") == ""
    assert lcc.exact_match("  return  a ", "return a") and not lcc.exact_match("return b", "return a")
    assert lcc.edit_similarity("abc", "abd") == pytest.approx(2 / 3)  # 2 * 2 matches / 6 characters
    assert lcc.edit_similarity("  x = 1", "x = 1") == 1.0 and lcc.edit_similarity("", "x") == 0.0
    assert lcc.code_tokens("self.count += step") == ["self", ".", "count", "+", "=", "step"]
    assert lcc.bleu("return json.load(f)", "return json.load(f)") == pytest.approx(1.0)
    assert lcc.bleu("zzz", "return a") == 0.0
    near = lcc.bleu("return json.loads(f)", "return json.load(f)")
    assert 0.3 < near < 1.0
    # Hand computation: hypothesis "a b c d", reference "a b c e": precisions 3/4, (2+1)/(3+1), (1+1)/(2+1), (0+1)/(1+1)
    expected = (3 / 4 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert lcc.bleu("a b c d", "a b c e") == pytest.approx(expected)
    assert lcc.bleu("a b", "a b c d") == pytest.approx(lcc.bleu("a b", "a b") * 2.718281828459045 ** (1 - 4 / 2))


class CharTokenizer:
    """`per_char` tokens per character: counts are exact, and decode is lossless."""

    def __init__(self, per_char=1):
        self.per_char = per_char

    def encode(self, text):
        return [ord(c) for c in text for _ in range(self.per_char)]

    def decode(self, ids):
        return "".join(chr(i) for i in ids[::self.per_char])


class WordTokenizer:
    """Words and whitespace runs; decode drops leading whitespace, so the first guess is off."""

    def encode(self, text):
        import re

        return re.findall(r"\s+|\S+", text)

    def decode(self, ids):
        return "".join(ids).lstrip()


@pytest.mark.parametrize("tokenizer,limit", [(CharTokenizer(), 10), (CharTokenizer(3), 30), (WordTokenizer(), 7),
                                             (WordTokenizer(), 1000)])
def test_lcc_keeps_the_longest_suffix_within_the_budget(tokenizer, limit):
    text = "def f(x):\n    return   x + 1\n\n\nclass  A:\n    pass\n" * 3
    kept = lcc.last_tokens(text, tokenizer, limit)
    assert text.endswith(kept) and len(tokenizer.encode(kept)) <= limit
    if kept != text:
        assert len(tokenizer.encode(text[-len(kept) - 1:])) > limit


# ----------------------------------------------------------------------------- codelm eval end to end
class Oracle:
    """Answers each prompt with what a good model would write, and the junk a model adds after it."""

    name, batch_size = "oracle", 4

    def __init__(self, answer, tokenizer=None):
        self.answer, self.calls = answer, []
        if tokenizer is not None:
            self.tokenizer = tokenizer

    def identity(self):
        return {"backend": "oracle"}

    def generate(self, requests):
        self.calls.extend(requests)
        return [Completion(self.answer(r.prompt), "stop", 1) for r in requests]


def test_eval_apps_end_to_end(tmp_path):
    problems = {p["task_id"]: p for p in apps.load_problems("apps", FIXTURES)}
    by_question = {p["question"].strip(): p for p in problems.values()}

    def answer(prompt):
        question = prompt.rsplit("QUESTION:\n", 1)[1].split("\nYour code should")[0]
        problem = next(p for q, p in by_question.items() if question.startswith(q))
        return problem["solution"] + "'''\n\nQUESTION:\nA made-up next question"

    backend = Oracle(answer)
    out = tmp_path / "run"
    summary = run_eval(EvalConfig("apps", "oracle", n=2, out=str(out), data_dir=str(FIXTURES), workers=2,
                                  progress=False), backend=backend)
    assert summary["pass@1"] == 1.0 and summary["samples"] == 8 and "pass@5" not in summary
    assert {(r.temperature, r.top_p) for r in backend.calls} == {(0.6, 0.95)}  # the paper's APPS decoding
    assert set(backend.calls[0].stop) == set(apps.STOP)
    rep = json.loads((out / "report.json").read_text())
    assert rep["scores"]["pass@1"] == 1.0 and rep["benchmark"] == "apps"


def test_eval_ds1000_end_to_end(tmp_path):
    problems = {p["prompt"]: p for p in ds1000.load_problems("ds1000", FIXTURES)}
    backend = Oracle(lambda prompt: problems[prompt]["reference_code"] + "</code>\nEND SOLUTION\n<code>")
    summary = run_eval(EvalConfig("ds1000", "oracle", out=str(tmp_path / "run"), data_dir=str(FIXTURES), workers=2,
                                  progress=False), backend=backend)
    assert summary["pass@1"] == 1.0 and len(backend.calls) == 2
    if importlib.util.find_spec("tensorflow") is None:
        assert summary["samples"] == 1 and summary["skipped"]["tasks"] == 1


@pytest.mark.parametrize("name", ["lcc-python", "lcc-python-4k"])
def test_eval_lcc_end_to_end(name, tmp_path):
    rows = fixture_rows("lcc/python.jsonl")

    def answer(prompt):
        row = next(r for r in rows if r["context"].endswith(prompt))
        return "\n" + row["gt"] + "\n    more_code()\n"

    # 200 tokens a character: a 4,000-token window is the last 20 characters of each context.
    backend = Oracle(answer, tokenizer=CharTokenizer(200))
    summary = run_eval(EvalConfig(name, "oracle", out=str(tmp_path / "run"), data_dir=str(FIXTURES), progress=False),
                       backend=backend)
    assert summary["pass@1"] == summary["exact_match"] == 1.0 and summary["edit_similarity"] == 1.0
    assert summary["bleu"] == pytest.approx(1.0)
    prompts = [r.prompt for r in backend.calls]
    if name.endswith("-4k"):
        assert prompts == [r["context"][-20:] for r in rows]
    else:
        assert prompts == [r["context"] for r in rows]


def test_lcc_4k_needs_a_tokenizer(tmp_path):
    with pytest.raises(ConfigError, match="--tokenizer"):
        run_eval(EvalConfig("lcc-python-4k", "oracle", out=str(tmp_path / "run"), data_dir=str(FIXTURES),
                            progress=False), backend=Oracle(lambda p: "x"))


def test_codelm_eval_cli_on_a_tiny_model(tmp_path, capsys):
    """`codelm eval --benchmark apps-introductory --data-dir DIR --model CKPT` through the CLI, native backend."""
    import torch
    from helpers import make_tiny_bpe

    from codelm.cli import main
    from codelm.model.checkpoint import save_hf
    from codelm.model.config import ModelConfig
    from codelm.model.llama import Transformer

    tok = make_tiny_bpe()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=tok.vocab_size,
                                    multiple_of=16, max_seq_len=2048)).eval()
    save_hf(model, tmp_path / "tiny", tokenizer=tok)
    out = tmp_path / "run"
    rc = main(["eval", "--benchmark", "apps-introductory", "--data-dir", str(FIXTURES),
               "--model", str(tmp_path / "tiny"), "--max-new-tokens", "4", "--out", str(out), "--workers", "1"])
    assert rc == 0 and "apps-introductory: pass@1" in capsys.readouterr().out
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in results] == ["APPS/0", "APPS/3"] and all("tests" in r for r in results)


def test_lcc_parquet_without_pyarrow_says_what_to_do(tmp_path, monkeypatch):
    import sys

    write_lines(tmp_path / "lcc" / "python.parquet", ["not read\n"])
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match="python.parquet: reading Parquet needs pyarrow .* convert the file to JSONL"):
        lcc.load_problems("python", tmp_path)


def test_scoring_resumes_from_its_journal(tmp_path):
    problems = {p["task_id"]: p for p in apps.load_problems("apps", FIXTURES)}
    path = samples_file(tmp_path, [{"task_id": t, "completion": problems[t]["solution"]} for t in ("APPS/0", "APPS/1")])
    out = tmp_path / "results.jsonl"
    first = apps.score("apps", path, out, ScoreOptions(data_dir=FIXTURES, workers=1, ks=(1,), progress=False))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    journal = out.with_name(out.name + ".partial")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    header = {"codelm_score_journal": 1, "benchmark": "apps", "samples_sha256": digest, "samples": 2,
              "time_limit": apps.TIME_LIMIT}
    # As a killed run leaves it: the header and the verdict of sample 0 (marked, to see that it is reused).
    write_lines(journal, [header, {"i": 0, "row": {**rows[0], "result": "passed (from the journal)"}}])
    with pytest.raises(CodelmError, match="unfinished run: pass --resume"):
        apps.score("apps", path, out, ScoreOptions(data_dir=FIXTURES, workers=1, ks=(1,), progress=False))
    resumed = apps.score("apps", path, out, ScoreOptions(data_dir=FIXTURES, workers=1, ks=(1,), progress=False, resume=True))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["result"] == "passed (from the journal)" and rows[1]["result"] == "passed"
    assert not journal.exists() and resumed["pass@1"] == first["pass@1"] == 1.0
    again = apps.score("apps", path, out, ScoreOptions(data_dir=FIXTURES, workers=1, ks=(1,), progress=False, resume=True))
    assert again["resumed"] == "already complete"

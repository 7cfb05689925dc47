"""MultiPL-E in the sandbox: per language, a reference-style solution passes and a wrong one fails."""
import json

import pytest

from codelm.errors import CodelmError
from codelm.evaluate.benchmarks import multipl_e
from codelm.evaluate.eval import EvalConfig, run_eval
from codelm.generate.backends import Completion

# (problem, correct body, wrong body), written after each language's prompt; the completion is what a
# model writes before the language's stop token (the closing brace comes from the tests where the
# stop token is "\n}").
SOLUTIONS = {
    "cpp": ("HumanEval_23_strlen", "    return string.size();", "    return 1;"),
    "java": ("HumanEval_23_strlen", "        return (long) string.length();", "        return 0l;"),
    "js": ("HumanEval_23_strlen", "  return string.length;\n}", "  return 2;\n}"),
    "ts": ("HumanEval_23_strlen", "  return string.length;\n}", "  return -1;\n}"),
    # PHP: MultiPL-E's strlen task redeclares a builtin and can never pass, so add two numbers.
    "php": ("HumanEval_53_add", "    return $x + $y;\n}", "    return $x - $y;\n}"),
    "pl": ("HumanEval_23_strlen", "    return length($string);\n}", "    return 7;\n}"),
    "sh": ("HumanEval_23_strlen", '    echo -n "$1" | wc -c', "    echo 3"),
    "rs": ("HumanEval_23_strlen", "    string.len() as isize", "    0"),
    "go": ("HumanEval_23_strlen", "    return len(myString)\n}", "    return 4\n}"),
}


def test_every_language_has_a_fixture():
    assert set(SOLUTIONS) == set(multipl_e.LANGUAGES)


@pytest.mark.parametrize("lang", sorted(SOLUTIONS))
def test_reference_passes_and_wrong_fails(lang, data_dir):
    missing = multipl_e.missing_tools(lang)
    if missing:
        pytest.skip(f"{lang}: missing {', '.join(missing)}")
    name, good, bad = SOLUTIONS[lang]
    problem = {p["name"]: p for p in multipl_e.load_problems(lang, data_dir)}[name]
    programs = [multipl_e.program(problem, good), multipl_e.program(problem, bad)]
    outcomes = multipl_e.run_programs(lang, programs, workers=2)
    assert outcomes[0] == (True, "passed"), outcomes[0]
    assert outcomes[1][0] is False and outcomes[1][1].startswith("run failed"), outcomes[1]
    broken = multipl_e.run_programs(lang, [multipl_e.program(problem, "  @@@ this is not code (((")], workers=1)[0]
    assert broken[0] is False


@pytest.mark.parametrize("lang", ["cpp", "js", "sh"])
def test_endless_loop_times_out(lang, data_dir, monkeypatch):
    if multipl_e.missing_tools(lang):
        pytest.skip(f"{lang} toolchain missing")
    body = {"cpp": "    while (true) {}\n    return 0;", "js": "  while (true) {}\n}",
            "sh": "    while true; do :; done"}[lang]
    name = SOLUTIONS[lang][0]
    problem = {p["name"]: p for p in multipl_e.load_problems(lang, data_dir)}[name]
    filename, steps = multipl_e.LANGUAGE_STEPS[lang]
    short = tuple(multipl_e.Step(s.argv, 2 if i == len(steps) - 1 else s.cpu_seconds, s.memory_mb)
                  for i, s in enumerate(steps))
    monkeypatch.setitem(multipl_e.LANGUAGE_STEPS, lang, (filename, short))
    passed, reason = multipl_e.run_programs(lang, [multipl_e.program(problem, body)], workers=1)[0]
    # Bash runs the function in a $(...) subshell: the CPU limit kills that process, and the test's
    # comparison then fails, so the verdict is a failure rather than a timeout of the whole job.
    assert not passed and (reason == "timed out" or lang == "sh"), reason


def test_missing_toolchain_is_refused(monkeypatch):
    monkeypatch.setattr(multipl_e.shutil, "which", lambda name: None)
    assert multipl_e.missing_tools("cpp") == ["g++"]
    with pytest.raises(CodelmError, match="missing g\\+\\+"):
        multipl_e.run_programs("cpp", ["int main(){}"])


def test_data_is_checked(tmp_path):
    (tmp_path / "multipl_e").mkdir()
    (tmp_path / "multipl_e" / "humaneval-js-reworded.jsonl").write_text("{}\n")
    with pytest.raises(CodelmError, match="sha256"):
        multipl_e.load_problems("js", tmp_path)
    with pytest.raises(CodelmError, match="unknown MultiPL-E language"):
        multipl_e.load_problems("cobol", tmp_path)


class Oracle:
    name, batch_size = "oracle", 8

    def __init__(self, answers):
        self.answers = answers

    def identity(self):
        return {"backend": "oracle"}

    def generate(self, requests):
        return [Completion(self.answers.get(r.prompt, "  return 0;\n}"), "stop") for r in requests]


HAS_CLOSE_ELEMENTS = {
    "js": "  for (let i = 0; i < numbers.length; i++)\n    for (let j = i + 1; j < numbers.length; j++)\n"
          "      if (Math.abs(numbers[i] - numbers[j]) < threshold) return true;\n  return false;\n}",
    "cpp": "    for (size_t i = 0; i < numbers.size(); i++)\n        for (size_t j = i + 1; j < numbers.size(); j++)\n"
           "            if (std::abs(numbers[i] - numbers[j]) < threshold) return true;\n    return false;",
}


@pytest.mark.parametrize("lang", ["js", "cpp"])
def test_eval_end_to_end_with_stop_tokens(lang, data_dir, tmp_path):
    """The protocol cuts at the language's stop tokens; the correct answer then passes, a wrong one fails."""
    if multipl_e.missing_tools(lang):
        pytest.skip(f"{lang} toolchain missing")
    problems = multipl_e.load_problems(lang, data_dir)
    assert problems[0]["name"] == "HumanEval_0_has_close_elements"
    tail = {"js": "\n\nfunction extra() {}\n", "cpp": "\n}\nint main() { return 1; }\n"}[lang]
    backend = Oracle({problems[0]["prompt"]: HAS_CLOSE_ELEMENTS[lang] + tail})
    out = tmp_path / "run"
    summary = run_eval(EvalConfig(f"multipl-e-{lang}", "oracle", limit=2, out=str(out), workers=2, progress=False),
                       backend=backend)
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, False], rows
    # Cut right before the stop token ("\nfunction " in JavaScript, "\n}" in C++).
    assert rows[0]["completion"] == HAS_CLOSE_ELEMENTS[lang] + ("\n" if lang == "js" else "")
    assert summary["pass@1"] == 0.5 and (out / "report.md").is_file()

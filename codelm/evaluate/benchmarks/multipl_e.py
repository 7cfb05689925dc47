"""MultiPL-E (Cassano et al. 2022): HumanEval translated to other languages, compiled and run in the sandbox.

Data: the "reworded" HumanEval prompts of MultiPL-E at commit cf9db336 (prompts/humaneval-LANG-reworded.jsonl),
found in DATA_DIR/multipl_e/ or $CODELM_DATA_DIR/multipl_e/ and checked against pinned sha256 sums.
The files' license (BSD-3 with a machine-learning restriction) allows evaluation, not training.

A program is MultiPL-E's: prompt + completion + "\\n" + tests. It passes when every step (compile,
run) exits with 0 inside the sandbox, as in MultiPL-E's own evaluators. Steps per language are in
`LANGUAGE_STEPS`; a language whose tools are not installed is refused with the command that is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from codelm.files import iter_jsonl
from codelm.errors import CodelmError, DataError

SOURCE = "https://raw.githubusercontent.com/nuprl/MultiPL-E/cf9db336f37d5ddcb50f6dbd97c67e5678ecfa96/prompts/"
SHA256 = {
    "cpp": "4910aa71c605754136ec9c95efcf458704967d21b3d09ed2a141eaca5a1903a2",
    "go": "41f2ce7f82f1a2e5a2b1753cd1a18e26cf216c6c45423f5da3e3351a1894e3f4",
    "java": "a38a4fab2136b0b7d03236f2c423d2182b2d4a182edd0fa9639305c3afb733a5",
    "js": "47536b7f7a0221586cdecc16c900ff8e7ba7dd60cc4bab3bddbbc4e866e0cef8",
    "php": "588a969eb171a380c4ef4e2dcf461fc2617648bc85c25b2ff497b341c5cc6d86",
    "pl": "faded23384d5494c72221a1220d5a955f1e39136564fe08f1e2c98d3926f8e18",
    "rs": "3e528744b7b6dcbc8054b489f3928b88901386911ba9bcf908b4f2b53c5bcc87",
    "sh": "f4a6fc2f6ecf8489bab32584aeeb8a05158bddd51518929fc7fe0010a95210a0",
    "ts": "dac2c1577ad99503d0c2e1d91ffcc386711ade271462934b604f08b01f7ad0fa",
}
LANGUAGES = tuple(SHA256)
NAMES = {"cpp": "C++", "go": "Go", "java": "Java", "js": "JavaScript", "php": "PHP", "pl": "Perl", "rs": "Rust",
         "sh": "Bash", "ts": "TypeScript"}
JAVATUPLES = "/usr/share/java/javatuples.jar"  # Debian's libjavatuples-java; the prompts import org.javatuples


@dataclass(frozen=True)
class Step:
    argv: tuple[str, ...]
    cpu_seconds: float
    memory_mb: int | None = 2048  # None for runtimes that reserve huge address ranges (JVM, V8, Go)


# (file name, steps); "{f}" is replaced by the file name. Compiles get generous limits: they are
# the harness's cost, not the sample's.
LANGUAGE_STEPS: dict[str, tuple[str, tuple[Step, ...]]] = {
    "cpp": ("main.cpp", (Step(("g++", "-std=c++17", "-o", "main", "{f}"), 60), Step(("./main",), 15))),
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


def host_paths(lang: str) -> tuple[str, ...]:
    """Host folders a language's tools read besides /usr (exposed read-only in the namespaces sandbox):
    the JDK keeps its security configuration under /etc/java-NN-openjdk."""
    import glob

    return tuple(sorted(glob.glob("/etc/java-*"))) if lang == "java" else ()


def missing_tools(lang: str) -> list[str]:
    """Commands (or files) language `lang` needs that this machine lacks."""
    if lang not in LANGUAGE_STEPS:
        return [f"<no steps for {lang}>"]
    _, steps = LANGUAGE_STEPS[lang]
    missing = [s.argv[0] for s in steps if not s.argv[0].startswith("./") and shutil.which(s.argv[0]) is None]
    if lang == "java" and not os.path.exists(JAVATUPLES):
        missing.append(JAVATUPLES)
    if lang == "ts" and shutil.which("node") is None:
        missing.append("node")
    return missing


def available_languages() -> list[str]:
    return [lang for lang in LANGUAGES if not missing_tools(lang)]


# ----------------------------------------------------------------------------- data
def data_path(lang: str, data_dir=None) -> Path:
    if lang not in SHA256:
        raise CodelmError(f"unknown MultiPL-E language {lang!r}; valid: {', '.join(LANGUAGES)}")
    name = f"humaneval-{lang}-reworded.jsonl"
    folders = [Path(d) for d in (data_dir, os.environ.get("CODELM_DATA_DIR")) if d]
    for folder in folders:
        for path in (folder / "multipl_e" / name, folder / name):
            if path.is_file():
                from codelm.evaluate.datasets import sha256_of

                got = sha256_of(path)
                if got != SHA256[lang]:
                    raise DataError(f"{path}: sha256 {got} does not match the pinned {SHA256[lang]} "
                                    f"(expected {SOURCE}{name})")
                return path
    raise DataError(f"{name} not found in {' or '.join(str(f / 'multipl_e') for f in folders) or 'any data folder'}; "
                    f"download it from {SOURCE}{name} into DATA_DIR/multipl_e/")


def load_problems(lang: str, data_dir=None) -> list[dict]:
    from codelm.evaluate.benchmarks import read_jsonl

    path = data_path(lang, data_dir)
    problems = read_jsonl(path)
    for i, p in enumerate(problems, 1):
        for key in ("name", "prompt", "tests", "stop_tokens"):
            if key not in p:
                raise DataError(f"{path}:{i}: missing field {key}")
    return problems


def task_loader(lang: str):
    def load(data_dir):
        from codelm.evaluate.protocols import Task

        return [Task(p["name"], p["prompt"], stop=tuple(p["stop_tokens"]), meta={"language": lang})
                for p in load_problems(lang, data_dir)]
    return load


def postprocess(task, text: str) -> str:
    from codelm.evaluate.protocols import cut

    return cut(text, task.stop)


# ----------------------------------------------------------------------------- scoring
def program(problem: dict, completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["tests"]


def job_for(lang: str, source: str):
    from codelm.evaluate.sandbox import CommandJob, CommandStep, Limits

    filename, steps = LANGUAGE_STEPS[lang]
    env = {"GOCACHE": "/tmp/go-cache", "GOPATH": "/tmp/go", "GO111MODULE": "off", "GOFLAGS": "-count=1"} \
        if lang == "go" else {}
    return CommandJob(
        steps=[CommandStep(argv=[a.replace("{f}", filename) for a in s.argv],
                           limits=Limits(cpu_seconds=s.cpu_seconds, wall_seconds=3 * s.cpu_seconds + 10,
                                         memory_mb=s.memory_mb, processes=256, output_bytes=2048, env=env))
               for s in steps],
        files={filename: {"text": source}})


def verdict(lang: str, results) -> tuple[bool, str]:
    """(passed, reason) from the step results of one job."""
    _, steps = LANGUAGE_STEPS[lang]
    for i, r in enumerate(results):
        if r.status != "ok":
            stage = "compile" if len(steps) > 1 and i < len(steps) - 1 else "run"
            detail = (r.stderr or r.stdout or "").strip().splitlines()
            tail = f": {detail[-1][:200]}" if detail else ""
            return False, ("timed out" if r.timed_out else f"{stage} failed: {r.reason}{tail}")
    return len(results) == len(steps), "passed"


def run_programs(lang: str, sources: list[str], workers: int = 2, sandbox: str = "auto", progress: bool = False):
    """(passed, reason) for each program source, run in a sandbox pool."""
    from tqdm import tqdm

    from codelm.evaluate.sandbox import SandboxConfig, SandboxPool

    missing = missing_tools(lang)
    if missing:
        raise CodelmError(f"MultiPL-E {NAMES.get(lang, lang)}: missing {', '.join(missing)} on this machine")
    with SandboxPool(workers=workers, config=SandboxConfig(mode=sandbox, extra_paths=host_paths(lang))) as pool:
        futures = [pool.submit(job_for(lang, s)) for s in sources]
        return [verdict(lang, f.result()) for f in tqdm(futures, desc=f"scoring multipl-e-{lang}", unit="sample",
                                                          disable=not progress)]


def score(lang: str, samples_path, out_path, data_dir=None, workers: int | None = None, sandbox: str = "auto",
          ks=(1, 10, 100), progress: bool = True) -> dict:
    """Score a samples JSONL (task_id = problem name, completion); writes results + summary like `codelm score`."""
    from codelm.files import atomic_write

    started = time.monotonic()
    problems = {p["name"]: p for p in load_problems(lang, data_dir)}
    samples = read_samples(Path(samples_path), problems)
    outcomes = run_programs(lang, [program(problems[s["task_id"]], s["completion"]) for s in samples],
                            workers=workers or os.cpu_count() or 1, sandbox=sandbox, progress=progress)
    rows = [{**s, "passed": ok, "result": reason} for s, (ok, reason) in zip(samples, outcomes)]
    out_path = Path(out_path)
    atomic_write(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return summarize(f"multipl-e-{lang}", rows, ks, out_path, {"elapsed_s": round(time.monotonic() - started, 2),
                                                                 "language": lang})


def read_samples(path: Path, problems: dict) -> list[dict]:
    samples = []
    for lineno, s in iter_jsonl(path):
        if not isinstance(s.get("completion"), str):
            raise DataError(f"{path}:{lineno}: expected an object with a string field completion")
        if s.get("task_id") not in problems:
            raise DataError(f"{path}:{lineno}: unknown task_id {s.get('task_id')!r} (ids look like "
                            f"{next(iter(problems))!r})")
        samples.append(s)
    if not samples:
        raise DataError(f"{path}: no samples")
    return samples


def summarize(name: str, rows: list[dict], ks, out_path: Path, extra: dict) -> dict:
    """The summary `codelm score` writes (pass@k over tasks, counts, per-task table), for non-runner scorers."""
    from codelm.evaluate import passk
    from codelm.files import atomic_write

    counts: dict[str, list[int]] = {}
    for r in rows:
        c = counts.setdefault(r["task_id"], [0, 0])
        c[0] += 1
        c[1] += bool(r["passed"])
    counts = {k: tuple(v) for k, v in counts.items()}
    ks = passk.parse_ks(ks)
    timed_out = sum(1 for r in rows if r["result"] == "timed out")
    passed = sum(1 for r in rows if r["passed"])
    summary = {"benchmark": name, "samples": len(rows), "tasks": len(counts), **passk.totals(counts, ks),
               "passed": passed, "failed": len(rows) - passed - timed_out, "timed_out": timed_out, **extra,
               "results": str(out_path)}
    summary_path = out_path.with_name(out_path.name.removesuffix(".jsonl") + "_summary.json")
    atomic_write(summary_path, json.dumps({**summary, "per_task": passk.per_task_table(counts, ks)}, indent=1) + "\n")
    summary["summary"] = str(summary_path)
    return summary

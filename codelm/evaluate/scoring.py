"""What the non-runner scorers share (APPS, DS-1000, LCC, GSM8K): reading a samples file whose ids name
known problems, and the summary `codelm score` writes (pass@k over tasks, counts, a per-task table)."""
from __future__ import annotations

import json
from pathlib import Path

from codelm.errors import DataError
from codelm.evaluate import passk
from codelm.files import atomic_write, iter_jsonl


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

"""`codelm score` shortcuts that must not change a verdict: duplicate programs run once, the
reference cache of HumanEval+/MBPP+, and the checker's early exit. Real sandbox throughout."""

import json
from pathlib import Path

import pytest
from helpers import read_jsonl, write_jsonl

from codelm.evaluate.refcache import ReferenceCache
from codelm.evaluate.scorers import load_benchmark, score
from codelm.evaluate.scoring import ScoreOptions


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CODELM_CACHE_DIR", str(folder))
    return folder


def _score_rows(tmp_path, rows, data_dir, ks):
    """Score rows as a HumanEval samples file with 2 workers: (summary, result rows)."""
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, rows)
    summary = score("humaneval", samples, tmp_path / "out.jsonl", ScoreOptions(workers=2, data_dir=data_dir, ks=ks, progress=False))
    return summary, read_jsonl(tmp_path / "out.jsonl")


def test_a_program_repeated_100_times_runs_once(tmp_path, data_dir, cache_dir):
    problem = load_benchmark("humaneval", ScoreOptions(data_dir=data_dir)).problems["HumanEval/0"]
    rows = [{"task_id": "HumanEval/0", "completion": problem["canonical_solution"], "n": n} for n in range(100)]
    summary, out = _score_rows(tmp_path, rows, data_dir, "1,10")
    assert summary["distinct_programs"] == 1 and summary["sample_jobs"] == 1
    assert [r["n"] for r in out] == list(range(100))
    assert {(r["passed"], r["result"]) for r in out} == {(True, "passed")}
    assert summary["pass@10"] == 1.0 and summary["samples"] == 100


def test_duplicates_keep_input_order_and_their_own_fields(tmp_path, data_dir, cache_dir):
    problems = load_benchmark("humaneval", ScoreOptions(data_dir=data_dir)).problems
    programs = {"HumanEval/0": [problems["HumanEval/0"]["canonical_solution"], "    return None\n"],
                "HumanEval/1": ["    return None\n"]}  # same text as task 0's: a different program
    rows = [{"task_id": t, "completion": programs[t][n % len(programs[t])], "n": n}
            for n in range(30) for t in ("HumanEval/0", "HumanEval/1")]
    summary, out = _score_rows(tmp_path, rows, data_dir, "1")
    assert summary["distinct_programs"] == 3 and summary["sample_jobs"] == 3
    assert [(r["task_id"], r["n"]) for r in out] == [(r["task_id"], r["n"]) for r in rows]
    assert [r["passed"] for r in out] == [r["task_id"] == "HumanEval/0" and r["n"] % 2 == 0 for r in rows]


def test_resume_runs_only_what_the_journal_lacks(tmp_path, data_dir, cache_dir):
    import hashlib

    from codelm.evaluate.scoring import JOURNAL_VERSION

    problem = load_benchmark("humaneval", ScoreOptions(data_dir=data_dir)).problems["HumanEval/3"]
    rows = [{"task_id": "HumanEval/3", "completion": problem["canonical_solution"] if n % 2 else "    pass\n", "n": n}
            for n in range(20)]
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, rows)
    out = tmp_path / "out.jsonl"
    score("humaneval", samples, out, ScoreOptions(workers=1, data_dir=data_dir, progress=False, ks="1"))
    full = read_jsonl(out)
    # A journal of a killed run holding the first 5 rows: 15 samples left, 2 programs among them.
    header = {"codelm_score_journal": JOURNAL_VERSION, "benchmark": "humaneval",
              "samples_sha256": hashlib.sha256(samples.read_bytes()).hexdigest(), "samples": 20}
    out.unlink()
    Path(str(out) + ".partial").write_text("\n".join([json.dumps(header)] + [json.dumps({"i": i, "row": full[i]})
                                                                             for i in range(5)]) + "\n")
    summary = score("humaneval", samples, out, ScoreOptions(workers=1, data_dir=data_dir, progress=False, ks="1", resume=True))
    assert summary["distinct_programs"] == 2 and summary["sample_jobs"] == 2
    assert read_jsonl(out) == full


def test_reference_cache_is_reused_and_a_corrupt_entry_recomputed(tmp_path, data_dir, cache_dir):
    problems = load_benchmark("humaneval+", ScoreOptions(data_dir=data_dir)).problems
    task_ids = ["HumanEval/0", "HumanEval/35", "HumanEval/53"]
    rows = []
    for task_id in task_ids:
        rows += [{"task_id": task_id, "completion": problems[task_id]["canonical_solution"]},
                 {"task_id": task_id, "completion": "    return None\n"}]
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, rows)

    def run(name):
        summary = score("humaneval+", samples, tmp_path / name, ScoreOptions(workers=2, data_dir=data_dir, ks="1", progress=False))
        return summary, [(r["passed"], r["base_passed"], r["result"]) for r in read_jsonl(tmp_path / name)]

    first, verdicts = run("first.jsonl")
    assert (first["reference_jobs"], first["reference_cached"]) == (3, 0)
    assert [v[0] for v in verdicts] == [True, False] * 3
    cache = ReferenceCache.for_benchmark(load_benchmark("humaneval+", ScoreOptions(data_dir=data_dir)))
    assert cache.folder.is_relative_to(cache_dir) and len(list(cache.folder.iterdir())) == 3

    second, again = run("second.jsonl")
    assert (second["reference_jobs"], second["reference_cached"]) == (0, 3)
    assert again == verdicts

    # A damaged entry (one byte of its outputs changed) is not trusted: that reference runs again.
    damaged = cache.path("HumanEval/35")
    data = bytearray(damaged.read_bytes())
    data[-10] = ord("A") if data[-10] != ord("A") else ord("B")
    damaged.write_bytes(bytes(data))
    cache.path("HumanEval/53").write_bytes(b"not a cache file")
    third, once_more = run("third.jsonl")
    assert (third["reference_jobs"], third["reference_cached"], third["reference_cache_rejected"]) == (2, 1, 2)
    assert once_more == verdicts
    assert cache.get("HumanEval/35") is not None and cache.get("HumanEval/53") is not None  # rewritten


def test_reference_cache_key_follows_data_and_checker(data_dir, cache_dir):
    benchmark = load_benchmark("mbpp+", ScoreOptions(data_dir=data_dir))
    folder = ReferenceCache.for_benchmark(benchmark).folder
    assert folder.parent == cache_dir / "reference"
    benchmark.reference_identity = {**benchmark.reference_identity, "checker": "changed"}
    assert ReferenceCache.for_benchmark(benchmark).folder != folder
    assert ReferenceCache.for_benchmark(benchmark, enabled=False).folder is None


# Reference solutions and broken ones: off by one, `return None`, a raise, and programs right on
# every base input but wrong on a plus input (HumanEval/35 starting its maximum at 0 fails an
# all-negative list; Mbpp/6 counting the bits of a negative XOR).
EVALPLUS_CASES = {
    "humaneval+": [
        ("HumanEval/35", None),
        ("HumanEval/35", "    m = 0\n    for e in l:\n        if e > m:\n            m = e\n    return m\n"),
        ("HumanEval/35", "    return None\n"),
        ("HumanEval/13", None),
        ("HumanEval/13", "    while b:\n        a, b = b, a % b\n    return a + 1\n"),
        ("HumanEval/23", "    return len(string) - 1 if len(string) > 3 else len(string)\n"),
        ("HumanEval/23", "    raise ValueError('no')\n"),
        ("HumanEval/32", None),
    ],
    "mbpp+": [
        ("Mbpp/6", None),
        ("Mbpp/6", "def differ_At_One_Bit_Pos(a, b):\n    return bin(a ^ b).count('1') == 1\n"),
        ("Mbpp/6", "def differ_At_One_Bit_Pos(a, b):\n    return None\n"),
        ("Mbpp/3", None),
        ("Mbpp/3", "def is_not_prime(n):\n    return any(n % i == 0 for i in range(2, n - 1))\n"),
        ("Mbpp/4", "def heap_queue_largest(nums, n):\n    return sorted(nums, reverse=True)[:n + 1]\n"),
    ],
}


@pytest.mark.parametrize("name", ["humaneval+", "mbpp+"])
def test_early_exit_changes_no_verdict(name, tmp_path, data_dir, cache_dir):
    problems = load_benchmark(name, ScoreOptions(data_dir=data_dir)).problems
    rows = []
    for task_id, code in EVALPLUS_CASES[name]:
        if code is None:
            code = problems[task_id]["canonical_solution"]
        rows.append({"task_id": task_id, "solution": code if name == "mbpp+" else problems[task_id]["prompt"] + code})
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, rows)
    verdicts = {}
    for early_exit in (True, False):
        out = tmp_path / f"out-{early_exit}.jsonl"
        score(name, samples, out, ScoreOptions(workers=2, data_dir=data_dir, ks="1", progress=False, early_exit=early_exit))
        verdicts[early_exit] = [(r["passed"], r["base_passed"]) for r in read_jsonl(out)]
    assert verdicts[True] == verdicts[False]
    # every kind of verdict is there: passed, failed on a plus input only, failed on base
    assert {(True, True), (False, True), (False, False)} <= set(verdicts[True])
    references = [i for i, (_, code) in enumerate(EVALPLUS_CASES[name]) if code is None]
    assert all(verdicts[True][i] == (True, True) for i in references)

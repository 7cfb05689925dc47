"""Corpus building: collection, filters, exact and near dedupe, decontamination, split, resume."""
import json
import re
import shutil
import subprocess
import textwrap

import pytest

from codelm.data.corpus import (CorpusOptions, build_benchmark_index, build_corpus, detect_language, read_corpus,
                                stdlib_dir)
from codelm.errors import DataError

STDLIB = stdlib_dir()
# Unrelated real modules of different styles, all well above the size filter.
REAL_MODULES = ["textwrap.py", "bisect.py", "colorsys.py", "heapq.py", "fnmatch.py", "shlex.py", "queue.py",
                "glob.py", "sched.py", "stat.py", "this.py", "keyword.py", "reprlib.py", "string.py"]

ORIGINAL = textwrap.dedent('''\
    def merge_intervals(intervals, tolerance=0):
        """Merge overlapping [start, end] intervals; gaps up to `tolerance` are closed."""
        ordered = sorted(intervals, key=lambda pair: pair[0])
        merged = []
        for start, end in ordered:
            if merged and start <= merged[-1][1] + tolerance:
                last_start, last_end = merged[-1]
                merged[-1] = [last_start, max(last_end, end)]
            else:
                merged.append([start, end])
        return merged


    def total_covered(intervals):
        covered = 0
        for start, end in merge_intervals(intervals):
            covered += end - start
        return covered
    ''')
# The same code with every name changed: a near-duplicate that shares few raw token 5-grams.
RENAMES = {"merge_intervals": "merge_spans", "intervals": "spans", "tolerance": "slack", "ordered": "by_lo",
           "pair": "item", "merged": "out", "start": "lo", "end": "hi", "last_start": "prev_lo",
           "last_end": "prev_hi", "total_covered": "total_length", "covered": "acc"}
RENAMED = re.sub(r"\b(" + "|".join(RENAMES) + r")\b", lambda m: RENAMES[m.group(1)], ORIGINAL)


def _write(root, rel, text):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.fixture
def humaneval_problem(data_dir):
    from codelm.evaluate.benchmarks import load_problems

    return load_problems("humaneval", data_dir=data_dir)[10]


def test_detect_language():
    assert detect_language("a/b.py") == "python"
    assert detect_language("x.RS") == "rust"
    assert detect_language("Makefile") == "makefile"
    assert detect_language("tool", "#!/usr/bin/env python3\nprint(1)\n") == "python"
    assert detect_language("run", "#!/bin/bash\necho hi\n") == "shell"
    assert detect_language("notes.txt") is None
    assert detect_language("data", "no shebang here") is None


def test_renamed_copy_is_a_near_duplicate_and_unrelated_code_is_not(tmp_path, data_dir):
    assert RENAMED != ORIGINAL and "merged" not in RENAMED
    src = tmp_path / "src"
    _write(src, "a/intervals.py", ORIGINAL)
    _write(src, "b/spans.py", RENAMED)
    for name in REAL_MODULES:
        shutil.copy(STDLIB / name, src / name)
    report = build_corpus(tmp_path / "out", sources=[str(src)], data_dir=str(data_dir), show_progress=False)
    removed = {json.loads(line)["path"]: json.loads(line) for line in open(tmp_path / "out" / "removed.jsonl")}
    assert removed["src/b/spans.py"]["reason"] == "near_duplicate"
    assert "src/a/intervals.py" in removed["src/b/spans.py"]["detail"]
    assert report.near_duplicates == 1
    kept = {r["path"] for split in ("train", "valid") for r in read_corpus(tmp_path / "out", split)}
    assert kept == {"src/a/intervals.py"} | {f"src/{n}" for n in REAL_MODULES}


def test_planted_humaneval_solution_is_found_and_unrelated_code_left_alone(tmp_path, data_dir, humaneval_problem):
    src = tmp_path / "src"
    for name in REAL_MODULES:
        shutil.copy(STDLIB / name, src / name) if src.exists() else (src.mkdir(), shutil.copy(STDLIB / name, src / name))
    # The benchmark's function, planted in the middle of an ordinary module.
    host = (STDLIB / "colorsys.py").read_text()
    cut = host.index("\ndef ", 2000)
    planted = host[:cut] + "\n\n" + humaneval_problem["prompt"] + humaneval_problem["canonical_solution"] + host[cut:]
    _write(src, "utils/helpers.py", planted)
    report = build_corpus(tmp_path / "out", sources=[str(src)], data_dir=str(data_dir), show_progress=False)
    assert [c["path"] for c in report.contaminated] == ["src/utils/helpers.py"]
    match = report.contaminated[0]["matches"][0]
    assert humaneval_problem["task_id"] in match["text"]
    assert match["shared"] >= 0.5 * match["of"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "src/utils/helpers.py" in md and "Contaminated files removed: 1" in md
    assert "humaneval" in report.decontamination["benchmarks"]
    # colorsys.py itself (the host without the plant) is kept: it is an exact match of nothing benchmarked.
    kept = {r["path"] for split in ("train", "valid") for r in read_corpus(tmp_path / "out", split)}
    assert "src/colorsys.py" in kept and len(kept) == len(REAL_MODULES)


def test_stdlib_modules_are_not_flagged(data_dir):
    index = build_benchmark_index(str(data_dir), n=10)
    assert len(index.labels) > 1000
    for path in sorted(STDLIB.glob("*.py"))[:80]:
        assert index.matches(path.read_text(encoding="utf-8", errors="replace"), 3, 0.5) == [], path


def test_filters_exact_duplicates_and_split(tmp_path, data_dir):
    src = tmp_path / "src"
    for name in REAL_MODULES:
        _write(src, f"pkg/{name}", (STDLIB / name).read_text())
    _write(src, "copy/heapq.py", (STDLIB / "heapq.py").read_text())     # exact duplicate
    _write(src, "tiny.py", "x = 1\n")                                     # too small
    (src / "blob.py").write_bytes(b"\x00\x01binary" * 50)                 # binary
    _write(src, "notes.txt", "plain text " * 50)                          # not code
    _write(src, "wide.py", "x = '" + "a" * 5000 + "'\n" + "y = 2\n" * 20)  # a 5000-character line
    (src / "latin1.py").write_bytes(("# caf\xe9\n" + "x = 1\n" * 30).encode("latin-1"))
    opts = CorpusOptions(valid_fraction=0.3, seed=1)
    report = build_corpus(tmp_path / "out", sources=[str(src)], data_dir=str(data_dir), opts=opts,
                          show_progress=False)
    removed = {json.loads(line)["path"]: json.loads(line)["reason"] for line in open(tmp_path / "out" / "removed.jsonl")}
    # The first copy in path order is kept.
    assert removed == {"src/pkg/heapq.py": "exact_duplicate", "src/tiny.py": "too_small", "src/blob.py": "binary",
                       "src/notes.txt": "not_code", "src/wide.py": "long_line", "src/latin1.py": "not_utf8"}
    train = list(read_corpus(tmp_path / "out", "train"))
    valid = list(read_corpus(tmp_path / "out", "valid"))
    assert train and valid
    assert {r["path"] for r in train}.isdisjoint({r["path"] for r in valid})
    assert report.files_kept == len(train) + len(valid) == len(REAL_MODULES)
    assert report.languages == {"python": {"files": len(REAL_MODULES), "bytes": report.bytes_kept}}
    for r in train + valid:   # text is the file, byte for byte
        assert r["text"] == (src / r["path"].split("/", 1)[1]).read_text()
    # The split is a function of the path and seed alone.
    again = build_corpus(tmp_path / "out2", sources=[str(src)], data_dir=str(data_dir), opts=opts, show_progress=False)
    assert [r["path"] for r in read_corpus(tmp_path / "out2", "valid")] == [r["path"] for r in valid]
    assert again.files_kept == report.files_kept


def test_resume_reuses_the_scan_and_survives_a_torn_line(tmp_path, data_dir):
    src = tmp_path / "src"
    for name in REAL_MODULES[:6]:
        _write(src, name, (STDLIB / name).read_text())
    out = tmp_path / "out"
    build_corpus(out, sources=[str(src)], data_dir=str(data_dir), show_progress=False)
    scan = out / ".work" / "scan.jsonl"
    lines = scan.read_text().splitlines(keepends=True)
    assert len(lines) == 6
    # As if killed while writing the 4th record: 3 whole lines and half of one.
    scan.write_text("".join(lines[:3]) + lines[3][:40])
    (out / "train.jsonl").unlink()
    build_corpus(out, sources=[str(src)], data_dir=str(data_dir), show_progress=False)
    records = [json.loads(x) for x in scan.read_text().splitlines()[3:]]
    # The torn line is skipped on reading; the missing files are scanned again and appended.
    assert sorted(r["path"] for r in records if "path" in r) == sorted(json.loads(x)["path"] for x in lines[3:])
    assert (out / "train.jsonl").exists()


def test_git_sources_use_tracked_files_only(tmp_path, data_dir):
    repo = tmp_path / "repo"
    _write(repo, "lib/core.py", (STDLIB / "bisect.py").read_text())
    _write(repo, "lib/extra.py", (STDLIB / "heapq.py").read_text())
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    git = ["git", "-C", str(repo)]
    subprocess.run(git + ["init", "-q"], check=True, env=env)
    subprocess.run(git + ["add", "lib/core.py"], check=True, env=env)
    subprocess.run(git + ["commit", "-qm", "one"], check=True, env=env)
    # A folder that is a checkout: `git ls-files` decides, so the untracked extra.py is left out.
    r = build_corpus(tmp_path / "out", sources=[str(repo)], data_dir=str(data_dir),
                     opts=CorpusOptions(valid_fraction=0.0), show_progress=False)
    assert [x["path"] for x in read_corpus(tmp_path / "out")] == ["repo/lib/core.py"]
    # A URL is cloned (shallow) first; file:// works without a network.
    r = build_corpus(tmp_path / "out2", sources=[f"file://{repo}"], data_dir=str(data_dir),
                     opts=CorpusOptions(valid_fraction=0.0), show_progress=False)
    assert [x["path"] for x in read_corpus(tmp_path / "out2")] == ["repo/lib/core.py"]
    assert r.files_kept == 1


def test_empty_or_useless_sources_are_clear_errors(tmp_path, data_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no files found"):
        build_corpus(tmp_path / "o1", sources=[str(tmp_path / "empty")], data_dir=str(data_dir), show_progress=False)
    _write(tmp_path / "junk", "a.txt", "hello")
    with pytest.raises(DataError, match="filtered out"):
        build_corpus(tmp_path / "o2", sources=[str(tmp_path / "junk")], data_dir=str(data_dir), show_progress=False)
    with pytest.raises(DataError, match="not a folder"):
        build_corpus(tmp_path / "o3", sources=[str(tmp_path / "missing")], data_dir=str(data_dir), show_progress=False)


def test_cli_corpus(tmp_path, data_dir, capsys):
    from codelm.cli import main

    src = tmp_path / "src"
    for name in REAL_MODULES[:4]:
        _write(src, name, (STDLIB / name).read_text())
    _write(src, "x.c", "int main(void) {\n  return 0;\n}\n" * 10)
    rc = main(["corpus", "--source", str(src), "--out", str(tmp_path / "out"), "--data-dir", str(data_dir),
               "--languages", "python"])
    assert rc == 0
    assert "4 files" in capsys.readouterr().out
    assert main(["corpus", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not a folder" in capsys.readouterr().err

"""codelm/files.py: atomic writes (all or nothing, errors propagate, no temp file left), JSONL reading, run
folders (open_run) and the one cache folder (cache_root)."""
from pathlib import Path

import pytest

from codelm.benchdata import files as benchdata_files
from codelm.errors import CodelmError, DataError
from codelm.evaluate.refcache import ReferenceCache
from codelm.files import (atomic_write, atomic_write_bytes, atomic_write_stream, cache_root, is_codelm_output,
                          iter_jsonl, open_run, write_json)


def test_atomic_writes_replace_whole_files_and_leave_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write(target, "héllo\n")
    assert target.read_text(encoding="utf-8") == "héllo\n"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    atomic_write_stream(target, lambda f: f.writelines(["a\n", "b\n"]))
    assert target.read_text() == "a\nb\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_a_failed_write_keeps_the_old_file_and_raises(tmp_path):
    target = tmp_path / "keep.json"
    atomic_write(target, "old")

    def half_then_fail(f):
        f.write("new, half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_stream(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_iter_jsonl_names_the_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n\n[1]\n')
    with pytest.raises(DataError, match=r"x\.jsonl:3: expected a JSON object, got list"):
        list(iter_jsonl(p))


def test_append_log_drops_a_torn_last_line_and_refuses_another_run(tmp_path):
    from codelm.files import AppendLog

    path = tmp_path / "log.jsonl"
    log = AppendLog(path, {"run": 1}).open()
    log.append({"i": 0})
    log.append_many([{"i": 1}, {"i": 2}])
    log.close()
    with open(path, "a") as f:
        f.write('{"i": 3')  # killed mid-line
    again = AppendLog(path, {"run": 1})
    items = again.read()
    assert items == [{"i": 0}, {"i": 1}, {"i": 2}]
    again.open(items)
    again.append({"i": 3})
    again.close()
    assert path.read_text().splitlines() == ['{"run": 1}', '{"i": 0}', '{"i": 1}', '{"i": 2}', '{"i": 3}']
    with pytest.raises(DataError, match="belongs to another run"):
        AppendLog(path, {"run": 2}).read()
    assert AppendLog(tmp_path / "none.jsonl", {"run": 1}).read() is None


def test_open_run_starts_resumes_and_refuses_another_run(tmp_path):
    out = tmp_path / "run"
    run = open_run(out, {"benchmark": "humaneval", "n": 1}, False, kind="eval-run", header={"codelm_eval_run": 1})
    assert run == {"codelm_eval_run": 1, "settings": {"benchmark": "humaneval", "n": 1}}
    assert is_codelm_output(out, "eval-run")  # the folder is marked as codelm's own
    write_json(out / "run.json", {**run, "state": "generating"})
    with pytest.raises(CodelmError, match="already holds a run .*pass --resume"):
        open_run(out, {"benchmark": "humaneval", "n": 1}, False, kind="eval-run", header={})
    assert open_run(out, {"benchmark": "humaneval", "n": 1}, True, kind="eval-run", header={})["state"] == "generating"
    with pytest.raises(CodelmError, match=r"other settings \(the different settings, was and now: \{'n': \(1, 2\)\}"):
        open_run(out, {"benchmark": "humaneval", "n": 2}, True, kind="eval-run", header={})
    (out / "run.json").write_text("[1, 2]\n")
    with pytest.raises(CodelmError, match="not a codelm eval-run run file"):
        open_run(out, {}, True, kind="eval-run", header={})


def test_one_cache_root_for_downloads_and_reference_results(tmp_path, monkeypatch):
    class Benchmark:
        name = "humaneval+"
        reference_identity = {"data_sha256": "0" * 64, "checker": "1" * 64}

    monkeypatch.delenv("CODELM_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "codelm"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "codelm"
    assert benchdata_files.cache_dir() == cache_root() / "data"
    assert ReferenceCache.for_benchmark(Benchmark()).folder.parent == cache_root() / "reference"
    monkeypatch.setenv("CODELM_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == Path(tmp_path / "mine") and benchdata_files.cache_dir() == tmp_path / "mine" / "data"
    assert ReferenceCache.for_benchmark(Benchmark()).folder.parent == tmp_path / "mine" / "reference"

"""bench/engines.py's cache rules, with a small real build in place of an engine's: where it builds,
READY written last, reuse while the version holds, a rebuild when it changes, a failed build's reason."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import engines  # noqa: E402


def _script_build(folder: Path, log: Path) -> None:
    (folder / "bin").mkdir()
    (folder / "bin" / "tool").write_text("#!/bin/sh\necho ok\n")
    engines._run(["sh", str(folder / "bin" / "tool")], log)


def _failing_build(folder: Path, log: Path) -> None:
    engines._run(["sh", "-c", "echo 'fatal: no compiler' >&2; exit 3"], log)


def _build_needing_a_missing_tool(folder: Path, log: Path) -> None:
    engines._run(["codelm-no-such-compiler", "--version"], log)


def test_a_missing_build_tool_is_a_reason_to_skip_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setitem(engines.ENGINES, "needs", engines.Engine("needs", "1.0", "needs-1.0", "bin/x",
                                                               _build_needing_a_missing_tool))
    with pytest.raises(engines.EngineUnavailable, match="`codelm-no-such-compiler` cannot run"):
        engines.ensure("needs")
    assert "cannot run" in engines.failed_reason("needs")


def test_build_reuse_rebuild_and_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert engines.engine_root() == tmp_path / "codelm" / "engines"
    monkeypatch.setitem(engines.ENGINES, "toy", engines.Engine("toy", "1.0", "toy-1.0", "bin/tool", _script_build))
    assert engines.ready("toy") is None
    path = engines.ensure("toy")
    assert path == tmp_path / "codelm" / "engines" / "toy-1.0" / "bin" / "tool"
    assert (path.parents[1] / "READY").read_text().strip() == "1.0"
    (path.parents[1] / "marker").write_text("kept")
    assert engines.ensure("toy") == path and (path.parents[1] / "marker").exists()  # reused, not rebuilt
    (path.parents[1] / "READY").write_text("0.9\n")  # built for another version: rebuilt
    assert engines.ensure("toy") == path and not (path.parents[1] / "marker").exists()

    monkeypatch.setitem(engines.ENGINES, "bad", engines.Engine("bad", "2.0", "bad-2.0", "bin/x", _failing_build))
    with pytest.raises(engines.EngineUnavailable, match="bad 2.0 could not be built: .*exited 3.*no compiler"):
        engines.ensure("bad")
    assert not (engines.engine_root() / "bad-2.0" / "READY").exists()
    assert "no compiler" in engines.failed_reason("bad")
    assert engines.main(["where", "bad"]) == 1


def test_an_engine_named_by_the_environment_is_used_as_is(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CODELM_ENGINE_VLLM_CPU", sys.executable)
    assert engines.ensure("vllm-cpu") == Path(sys.executable)
    monkeypatch.setenv("CODELM_ENGINE_VLLM_CPU", str(tmp_path / "missing"))
    with pytest.raises(engines.EngineUnavailable, match="CODELM_ENGINE_VLLM_CPU=.*does not exist"):
        engines.ensure("vllm-cpu")
    with pytest.raises(engines.EngineUnavailable, match="unknown engine"):
        engines.ensure("nope")

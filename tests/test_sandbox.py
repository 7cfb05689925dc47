"""The sandbox's job API: verdicts, limits, output, commands, workers, modes."""

import os
import signal
import time

import pytest

from codelm.evaluate import sandbox
from codelm.evaluate.sandbox import (CommandStep, Limits, PythonJob, SandboxError, SandboxPool,
                                     namespaces_available, run_command, run_python)
from codelm.evaluate.zygote import pack, unpack

NAMESPACES, WHY_NOT = namespaces_available()
MODES = ["namespaces", "rlimits", "none"] if NAMESPACES else ["rlimits", "none"]


@pytest.fixture(scope="module", params=MODES)
def pool(request):
    with SandboxPool(workers=2, mode=request.param) as p:
        yield p


def job(*sources, limits=None, **kwargs):
    stages = [(f"<stage{i}>", s) for i, s in enumerate(sources)]
    return PythonJob(stages=stages, limits=limits or Limits(cpu_seconds=2, wall_seconds=4, output_bytes=4096),
                     **kwargs)


def test_pass_and_fail(pool):
    assert pool.run(job("def f(x):\n    return x + 1\n", "assert f(1) == 2\n")).status == "passed"
    failed = pool.run(job("def f(x):\n    return x\n", "assert f(1) == 2, 'off by one'\n"))
    assert failed.status == "failed" and failed.reason == "AssertionError: off by one"
    syntax = pool.run(job("def f(:\n"))
    assert syntax.status == "failed" and syntax.reason.startswith("SyntaxError")


@pytest.mark.parametrize("early_exit", [
    "import os\nos._exit(0)\n",
    "import sys\nsys.exit(0)\n",
    "raise SystemExit(0)\n",
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "exit()\n",
])
def test_early_exits_never_pass(pool, early_exit):
    result = pool.run(job(early_exit, "assert False, 'the test must not be skipped'\n"))
    assert result.status == "failed", result
    assert "test must not be skipped" not in result.reason


def test_stages_are_compiled_separately(pool):
    # An unclosed string in the solution cannot swallow the test that follows.
    result = pool.run(job("def f():\n    return 1\nx = '''", "assert f() == 2\n"))
    assert result.status == "failed" and result.reason.startswith("SyntaxError")


def test_timeouts(pool):
    # The CPU limit, not the wall clock, stops the spin: a generous wall limit (a loaded machine may give
    # the spin its second of CPU only after several seconds), and it used about the 1 s it was allowed.
    spin = pool.run(job("while True:\n    pass\n", limits=Limits(cpu_seconds=1, wall_seconds=60)))
    assert spin.status == "timed out" and 0.9 <= spin.cpu_seconds < 3, spin
    sleep = pool.run(job("import time\ntime.sleep(60)\n", limits=Limits(cpu_seconds=1, wall_seconds=1.5)))
    assert sleep.status == "timed out" and sleep.wall_seconds < 5


def test_output_is_captured_and_capped(pool):
    result = pool.run(job("import sys\nprint('x' * 100000)\nprint('err', file=sys.stderr)\n",
                          limits=Limits(output_bytes=1000)))
    assert result.status == "passed"
    assert result.stdout == "x" * 1000 and result.stderr == "err\n"
    quiet = pool.run(job("print('hello')\n"))
    assert quiet.stdout == "hello\n"


def test_environment_is_scrubbed(pool, monkeypatch):
    result = pool.run(job("import os\nprint(sorted(os.environ))\nprint(os.getcwd())\n"))
    names = eval(result.stdout.splitlines()[0])
    assert set(names) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "PYTHONDONTWRITEBYTECODE", "MALLOC_ARENA_MAX"}
    assert result.stdout.splitlines()[1].endswith("work")


def test_memory_limit_is_relative_to_the_interpreter(pool):
    if pool.mode == "none":
        pytest.skip("no memory limit without rlimits")
    fine = pool.run(job("x = bytearray(300 * 2**20)\nassert len(x) > 0\n"))
    assert fine.status == "passed", fine
    bomb = pool.run(job("x = bytearray(8 * 2**30)\n", limits=Limits(memory_mb=1024)))
    assert bomb.status == "failed" and "MemoryError" in bomb.reason


def test_checker_modules_and_values(pool):
    pool.define_module("test-checker", "def check(ns, report, expected):\n"
                                       "    report('half', 1)\n"
                                       "    assert ns['f']() == expected\n"
                                       "    return {'seen': repr(expected)}\n")
    pool.define_value("test-expected", (1, {2, 3}))
    checker = {"module": "test-checker", "function": "check", "args": {"expected": {"$ref": "test-expected"}}}
    good = pool.run(job("def f():\n    return (1, {3, 2})\n", checker=checker, needs=("test-checker", "test-expected")))
    assert good.status == "passed" and good.result == {"seen": "(1, {2, 3})"} and good.milestones == {"half": 1}
    bad = pool.run(job("def f():\n    return [1, {2, 3}]\n", checker=checker, needs=("test-checker", "test-expected")))
    assert bad.status == "failed" and bad.milestones == {"half": 1}


def test_trusted_stages_are_reused(pool):
    test = ("<test>", "assert f() == 3\n", True)
    for value, status in ((3, "passed"), (4, "failed"), (3, "passed")):
        result = pool.run(PythonJob(stages=[("<s>", f"def f():\n    return {value}\n"), test]))
        assert result.status == status


def test_many_jobs_in_parallel(pool):
    futures = [pool.submit(job(f"x = {i}\n", f"assert x == {i}\n")) for i in range(60)]
    assert all(f.result().status == "passed" for f in futures)


def test_commands_with_files_and_steps():
    steps = [CommandStep(["sh", "build.sh"]), CommandStep(["./prog", "arg"]), CommandStep(["sh", "-c", "echo never"])]
    files = {"build.sh": "printf '#!/bin/sh\\necho run $1\\nexit 3\\n' > prog && chmod +x prog\n"}
    results = run_command(steps, files=files)
    assert [r.status for r in results] == ["ok", "failed"]
    assert results[1].stdout == "run arg\n" and results[1].exit_code == 3 and results[1].reason == "exit code 3"
    missing = run_command(["no-such-program-here"])
    assert missing[0].status == "failed" and "cannot run no-such-program-here" in missing[0].reason
    binary = run_command(["sh", "-c", "od -An -tx1 data.bin"], files={"data.bin": b"\x00\xff"})
    assert binary[0].stdout.split() == ["00", "ff"]


def test_command_timeout_kills_the_whole_group():
    results = run_command(["sh", "-c", "sleep 100 & sleep 100 & while :; do :; done"],
                          limits=Limits(cpu_seconds=1, wall_seconds=3))
    assert results[0].status == "timed out"


def test_run_python_helper():
    result = run_python("print(6 * 7)")
    assert result.status == "passed" and result.stdout == "42\n"


def test_worker_that_dies_is_replaced():
    with SandboxPool(workers=1) as pool:
        assert pool.run(job("pass\n")).status == "passed"
        for pid in reversed(pool.worker_processes()[0]):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        assert pool.run(job("assert 1 + 1 == 2\n")).status == "passed"


def test_pack_round_trip():
    value = {"a": (1, 2.5, float("inf")), 2: {3, 4}, "c": [frozenset([1]), b"x", 1 + 2j, None, True, -2 ** 9000]}
    assert unpack(pack(value)) == value


def test_mode_fallback_when_namespaces_are_unavailable(monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "_namespaces_error", ["simulated: no user namespaces"])
    monkeypatch.setattr(sandbox, "_warned", set())
    with pytest.raises(SandboxError, match="simulated"):
        SandboxPool(workers=1, mode="namespaces")
    with SandboxPool(workers=1, mode="auto") as pool:
        assert pool.mode == "rlimits"
        assert pool.run(job("assert True\n")).status == "passed"
    err = capsys.readouterr().err
    assert err.count("falling back to rlimits") == 1


@pytest.mark.skipif(not NAMESPACES, reason=f"namespaces sandbox unavailable: {WHY_NOT}")
def test_namespaces_isolation_report():
    with SandboxPool(workers=1, mode="namespaces") as pool:
        iso = pool.isolation
        assert iso.mode == "namespaces" and iso.pid_namespace and iso.net_namespace and iso.mount_namespace
        result = pool.run(job("import os\nprint(os.getpid(), os.getuid() if os.getuid() else 0)\n"
                              "print(sorted(os.listdir('/proc/self/fd')))\n"))
        pid = int(result.stdout.split()[0])
        assert pid < 100  # a fresh PID namespace
        assert result.stdout.splitlines()[1] == "['0', '1', '2', '3', '4']"  # 4: the listing itself
        assert pool.ping()["processes"] == 0


def test_an_interrupt_stops_running_jobs_at_once():
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with SandboxPool(workers=2) as pool:
            futures = [pool.submit(job("import time\ntime.sleep(60)\n", limits=Limits(cpu_seconds=60)))
                       for _ in range(5)]
            time.sleep(0.3)
            raise KeyboardInterrupt
    assert time.monotonic() - started < 20
    assert all(isinstance(f.exception(timeout=5), SandboxError) for f in futures)


def test_big_answers_and_big_definitions_in_flight_together():
    # The worker writes a large answer while the harness writes a large definition for the next
    # job: both pipes must be pumped at once, or each side waits for the other forever.
    with SandboxPool(workers=1) as pool:
        pool.define_module("big-checker", "def big(ns, report, size):\n    return 'x' * size\n"
                                          "def length(ns, report, value):\n    return len(value)\n")
        pool.define_value("big-value", "y" * (8 << 20))
        first = pool.submit(PythonJob(stages=[], checker={"module": "big-checker", "function": "big",
                                                          "args": {"size": 8 << 20}},
                                      needs=("big-checker",), result_limit=64 << 20))
        second = pool.submit(PythonJob(stages=[], checker={"module": "big-checker", "function": "length",
                                                           "args": {"value": {"$ref": "big-value"}}},
                                       needs=("big-checker", "big-value")))
        assert len(first.result(timeout=120).result) == 8 << 20
        assert second.result(timeout=120).result == 8 << 20

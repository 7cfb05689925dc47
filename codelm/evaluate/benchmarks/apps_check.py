"""APPS test cases, run inside the sandbox (standard library only: shipped to each worker as source).

`run_tests` is the checker of an APPS sample job. The program arrives as text and is compiled here,
in the job's forked child. Like APPS's own harness it runs in-process, once per test case:

  standard input  a fresh `__main__` namespace per test; file descriptors 0 and 1 are pointed at
                  files in the job's folder, so input(), sys.stdin, sys.stdin.buffer, open(0) and
                  os.write(1, ...) all behave as under a judge; SystemExit ends the program (a
                  non-zero code is a runtime error); threads it started are joined.
  call-based      the program is run once; each test calls `fn_name(*args)`, or
                  `Solution().fn_name(*args)` when the starter code declares `class Solution`.

Both get APPS's import preamble first (its standard-library part: numpy is left out, since a
forked interpreter pays ~0.1 s to import it and a program that uses it imports it itself).

Verdicts (stops at the first failing test, as pass@k only needs all-or-nothing):
  passed          the checker returns {"tests": n}
  WrongAnswer     output differs (rules in `stdout_matches`, `call_matches`)
  RuntimeFailure  the program raised, or exited with a non-zero code
  TestTimeout     a test ran past `time_limit` seconds of CPU (an ITIMER_PROF alarm; a
                  BaseException, so a program's `except Exception` cannot swallow it)
A milestone "tests_passed" is reported after each passing test.
"""

import builtins
import copy
import math
import os
import signal
import sys
import threading

# APPS's harness prepends these imports to every program (testing_util.py), numpy aside.
PREAMBLE = """\
import sys
import time
import itertools
from itertools import accumulate, product, permutations, combinations
import collections
from collections import Counter, OrderedDict, deque, defaultdict, ChainMap
from functools import lru_cache
import math
from math import sqrt, sin, cos, tan, ceil, fabs, floor, gcd, exp, log, log2
import fractions
from typing import List, Tuple
import random
import heapq
from heapq import *
"""
FLOAT_RTOL, FLOAT_ATOL = 1e-5, 1e-8  # numpy.allclose's defaults, which APPS's float comparison uses


class WrongAnswer(AssertionError):
    pass


class RuntimeFailure(Exception):
    pass


class TestTimeout(BaseException):
    pass


def _on_timer(signum, frame):
    raise TestTimeout()


class _CpuLimit:
    def __init__(self, seconds):
        self.seconds = seconds

    def __enter__(self):
        signal.setitimer(signal.ITIMER_PROF, self.seconds)

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_PROF, 0)
        return False


def run_tests(namespace, report, program, tests, fn_name=None, use_class=False, time_limit=4.0):
    inputs, outputs = tests["inputs"], tests["outputs"]
    total = len(inputs)
    signal.signal(signal.SIGPROF, _on_timer)
    preamble = compile(PREAMBLE, "<apps-preamble>", "exec", dont_inherit=True)
    code = compile(program, "<solution>", "exec", dont_inherit=True)  # a SyntaxError fails the sample
    call = _loaded_function(preamble, code, fn_name, use_class, time_limit) if fn_name else None
    for i, (given, expected) in enumerate(zip(inputs, outputs)):
        where = f"test {i + 1} of {total}"
        try:
            if call is not None:
                with _CpuLimit(time_limit):
                    got = call()(*_arguments(given))
                ok = call_matches(got, _int_keys(expected))
            else:
                got = _run_with_stdin(preamble, code, given, time_limit)
                ok = stdout_matches(got, expected)
        except TestTimeout:
            raise TestTimeout(f"{where} ran over {time_limit:g} s of CPU") from None
        except RuntimeFailure as e:
            raise RuntimeFailure(f"{where}: {e}") from None
        except Exception as e:  # the program's own error
            raise RuntimeFailure(f"{where}: {_describe(e)}") from None
        if not ok:
            raise WrongAnswer(f"wrong answer on {where}")
        report("tests_passed", i + 1)
    return {"tests": total}


# ----------------------------------------------------------------------------- standard input
def _run_with_stdin(preamble, code, given, time_limit):
    text = "\n".join(map(str, given)) if isinstance(given, list) else str(given)
    with open("stdin.txt", "w", encoding="utf-8") as f:
        f.write(text)
    # Drop the previous test's stream objects now: one the program made with open(1, "w") would
    # otherwise close fd 1 when collected, after it points at this test's output.
    sys.stdin = sys.stdout = None
    for fd, path, flags in ((0, "stdin.txt", os.O_RDONLY), (1, "stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o600)
        if opened != fd:  # the program may have closed fd 0 or 1 (open(0) without closefd=False does)
            os.dup2(opened, fd)
            os.close(opened)
    ours = sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stdin = open(0, "r", encoding="utf-8", errors="replace", closefd=False)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    before = set(threading.enumerate())
    with _CpuLimit(time_limit):
        try:
            exec(preamble, namespace)
            exec(code, namespace)
        except SystemExit as e:
            if e.code not in (None, 0):
                raise RuntimeFailure(f"exit code {e.code!r}") from None
        for thread in threading.enumerate():  # e.g. main() run in a thread with a larger stack
            if thread not in before and thread is not threading.current_thread():
                thread.join()
        for stream in {id(ours): ours, id(sys.stdout): sys.stdout}.values():
            try:
                stream.flush()
            except Exception:
                pass
    with open("stdout.txt", encoding="utf-8", errors="replace") as f:
        return f.read()


def _lines(text):
    return [line.strip() for line in text.splitlines() if line.strip()]


def _close(a, b):
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    if math.isnan(x) or math.isnan(y):
        return False
    return x == y or abs(x - y) <= FLOAT_ATOL + FLOAT_RTOL * abs(y)


def stdout_matches(got, expected):
    """Line by line with surrounding whitespace and blank lines ignored (APPS's normalisation), then
    token by token (runs of spaces inside a line ignored), then numbers within numpy.allclose's
    tolerance. APPS's last fallbacks, which compare lines as unordered sets of tokens, are not used:
    they accept output in the wrong order."""
    if isinstance(expected, list):
        expected = "\n".join(map(str, expected))
    got_lines, want_lines = _lines(got), _lines(str(expected))
    if got_lines == want_lines:
        return True
    got_tokens, want_tokens = [line.split() for line in got_lines], [line.split() for line in want_lines]
    if got_tokens == want_tokens:
        return True
    if [len(t) for t in got_tokens] != [len(t) for t in want_tokens]:
        return False
    return all(a == b or _close(a, b) for g, w in zip(got_tokens, want_tokens) for a, b in zip(g, w))


# ----------------------------------------------------------------------------- call-based
def _loaded_function(preamble, code, fn_name, use_class, time_limit):
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        with _CpuLimit(time_limit):
            exec(preamble, namespace)
            exec(code, namespace)
    except TestTimeout:
        raise TestTimeout(f"loading the program ran over {time_limit:g} s of CPU") from None
    except Exception as e:
        raise RuntimeFailure(f"loading the program: {_describe(e)}") from None
    if use_class and isinstance(namespace.get("Solution"), type):
        cls = namespace["Solution"]
        if not hasattr(cls, fn_name):
            raise RuntimeFailure(f"class Solution has no method {fn_name}")
        return lambda: getattr(cls(), fn_name)  # a fresh instance per test: no state carried over
    if not callable(namespace.get(fn_name)):
        raise RuntimeFailure(f"the program defines no function {fn_name}")
    return lambda: namespace[fn_name]


def _int_keys(value):
    """JSON turned int dict keys into strings; APPS converts them back (LeetCode-style inputs)."""
    if isinstance(value, dict):
        if value and all(isinstance(k, str) and k.lstrip("-").isdigit() for k in value):
            return {int(k): _int_keys(v) for k, v in value.items()}
        return {k: _int_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_int_keys(v) for v in value]
    return value


def _arguments(given):
    args = given if isinstance(given, list) else [given]
    return copy.deepcopy(_int_keys(args))


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def call_matches(got, expected):
    """Equal once tuples are lists (JSON has no tuples); APPS stores most outputs wrapped in a
    one-element list, so `[x]` also accepts x. (APPS accepts the first element of any list; a longer
    expected list is compared whole here.)"""
    got = _plain(got)
    if got == expected:
        return True
    return isinstance(expected, list) and len(expected) == 1 and got == expected[0]


def _describe(e):
    text = str(e)
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."

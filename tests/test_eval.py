"""`codelm eval`: golden prompts, post-processing of recorded generations, end to end on every backend, resume."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import make_tiny_bpe, tiny_llama

from codelm.errors import CodelmError
from codelm.evaluate.benchmarks import gsm8k, load_problems
from codelm.evaluate.eval import EvalConfig, run_eval
from codelm.evaluate.protocols import HUMANEVAL_STOP, Task, extract_code, get_protocol
from codelm.generate.backends import Completion
from codelm.generate.backends.native import NativeBackend
from codelm.model.checkpoint import save_hf

# ----------------------------------------------------------------------------- golden prompts
HUMANEVAL_2 = '''def truncate_number(number: float) -> float:
    """ Given a positive floating point number, it can be decomposed into
    and integer part (largest integer smaller than given number) and decimals
    (leftover part always smaller than 1).

    Return the decimal part of the number.
    >>> truncate_number(3.5)
    0.5
    """'''

MBPP_11 = """You are an expert Python programmer, and here is your task: Write a function to find the similar elements from the given two tuple lists. Your code should pass these tests:

assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)
assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)
assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)
[BEGIN]
def similar_elements(test_tup1, test_tup2):
  res = tuple(set(test_tup1) & set(test_tup2))
  return (res)
[DONE]

You are an expert Python programmer, and here is your task: Write a python function to identify non-prime numbers. Your code should pass these tests:

assert is_not_prime(2) == False
assert is_not_prime(10) == True
assert is_not_prime(35) == True
[BEGIN]
import math
def is_not_prime(n):
    result = False
    for i in range(2,int(math.sqrt(n)) + 1):
        if n % i == 0:
            result = True
    return result
[DONE]

You are an expert Python programmer, and here is your task: Write a function to find the largest integers from a given list of numbers using heap queue algorithm. Your code should pass these tests:

assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] 
assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] 
assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]
[BEGIN]
import heapq as hq
def heap_queue_largest(nums,n):
  largest_nums = hq.nlargest(n, nums)
  return largest_nums
[DONE]

You are an expert Python programmer, and here is your task: Write a python function to remove first and last occurrence of a given character from the string. Your code should pass these tests:

assert remove_Occ("hello","l") == "heo"
assert remove_Occ("abcda","a") == "bcd"
assert remove_Occ("PHP","P") == "H"
[BEGIN]
"""


def test_humaneval_prompt_is_golden(data_dir):
    tasks = get_protocol("humaneval").load_tasks(str(data_dir))
    assert len(tasks) == 164 and tasks[2].task_id == "HumanEval/2"
    assert tasks[2].prompt == HUMANEVAL_2 and tasks[2].suffix is None
    assert tasks[2].stop == ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")


def test_mbpp_three_shot_prompt_is_golden(data_dir):
    tasks = get_protocol("mbpp").load_tasks(str(data_dir))
    assert [t.task_id for t in tasks[:2]] == ["Mbpp/11", "Mbpp/12"] and len(tasks) == 500  # the test split
    assert tasks[0].prompt == MBPP_11 and tasks[0].stop == ("[DONE]",)
    plus = get_protocol("mbpp+").load_tasks(str(data_dir))
    assert len(plus) == 378 and plus[0].task_id == "Mbpp/2"
    assert plus[0].prompt.endswith("assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n[BEGIN]\n")


def test_infilling_tasks_are_the_problems_prefix_and_suffix(data_dir):
    psm, spm = get_protocol("humaneval-infilling-single-line"), get_protocol("humaneval-infilling-single-line-spm")
    assert (psm.spm, spm.spm) == (False, True) and psm.benchmark == spm.benchmark
    task = psm.load_tasks(str(data_dir))[0]
    problem = load_problems("humaneval-infilling-single-line", str(data_dir))[0]
    assert task.task_id == "SingleLineInfilling/HumanEval/0/L0"
    assert task.prompt == problem["prompt"] and task.suffix == problem["suffix"] and task.stop == ()
    assert task.prompt.endswith('    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n    True\n    """\n\n')
    assert task.suffix.startswith("        for idx2, elem2 in enumerate(numbers):\n")


def test_infilling_requests_use_reference_token_layout(tmp_path):
    """The native backend sends PSM/SPM infilling prompts in the reference layout (doc §2.1)."""
    from helpers import make_tiny_sentencepiece

    from codelm.generate.backends import Request
    from codelm.tokenizer import Tokenizer

    tok = Tokenizer.load(make_tiny_sentencepiece(tmp_path))
    backend = NativeBackend(tiny_llama(tok.vocab_size), tok)
    seen = [[backend._row(r, None, None).prompt]
            for r in (Request("def f(x):\n    return ", "\n"), Request("def f(x):\n    return ", "\n", spm=True))]
    pre, suf = tok.encode("def f(x):\n    return "), tok.encode_infilling("\n")
    assert seen[0] == [[tok.bos_id, tok.prefix_id] + pre + [tok.suffix_id] + suf + [tok.middle_id]]
    assert seen[1] == [[tok.bos_id, tok.prefix_id, tok.suffix_id] + suf + [tok.middle_id] + pre]


# ----------------------------------------------------------------------------- post-processing
def test_post_processing_of_recorded_generations():
    he = get_protocol("humaneval")
    task = Task("HumanEval/2", HUMANEVAL_2, stop=HUMANEVAL_STOP)
    recorded = "\n    return number % 1.0\n\n\ndef main():\n    print(truncate_number(3.5))\n"
    assert he.postprocess(task, recorded) == "\n    return number % 1.0\n\n"
    assert he.postprocess(task, "\n    x = 1\n# test\nif __name__") == "\n    x = 1"
    assert he.postprocess(task, "\n    return 1\n```\nThat is all.") == "\n    return 1"
    mbpp = get_protocol("mbpp")
    assert mbpp.postprocess(task, "def f(x):\n  return x\n[DONE]\n\nYou are an expert") == "def f(x):\n  return x\n"
    assert mbpp.postprocess(task, "def f():\n  pass\n\nYou are an expert Python programmer, and") == \
        "def f():\n  pass\n"
    single = get_protocol("humaneval-infilling-single-line")
    assert single.postprocess(task, "        return x\n        y = 2\n") == "        return x\n"
    assert single.postprocess(task, "x + 1") == "x + 1"
    multi = get_protocol("humaneval-infilling-multi-line")
    assert multi.postprocess(task, "  a\n  b\n") == "  a\n  b\n"
    cpp = Task("HumanEval_23_strlen", "long f() {\n", stop=("\n}",))
    assert get_protocol("multipl-e-cpp").postprocess(cpp, "    return 1;\n}\nint main() {}") == "    return 1;"
    g = get_protocol("gsm8k")
    text = g.postprocess(task, " 3 + 4 = 7. The answer is 7.\n\nQuestion: next one")
    assert text == "3 + 4 = 7. The answer is 7." and gsm8k.extract_answer(text) == "7"
    assert gsm8k.extract_answer("She pays $1,250.50 in total") == "1250.50"
    assert gsm8k.extract_answer("The answer is 12. Then 99") == "12"
    assert gsm8k.extract_answer("no number") is None
    pal = get_protocol("gsm8k-pal")
    assert pal.postprocess(task, "    return 2 + 3\n\n\n# Question: x") == "def solution():\n    return 2 + 3\n"
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone") == "def f():\n    return 1\n"
    assert extract_code("[PYTHON]\ndef g(): pass\n[/PYTHON]") == "def g(): pass\n"


# ----------------------------------------------------------------------------- oracle runs
class Oracle:
    """Answers each prompt with the benchmark's reference solution wrapped in what a model adds after it,
    so only a correct prompt -> post-processing -> scoring chain gives pass@1 = 1."""

    name, batch_size = "oracle", 4

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def identity(self):
        return {"backend": "oracle"}

    def generate(self, requests):
        self.calls.extend(requests)
        return [Completion(self.answers[(r.prompt, r.suffix)], "stop", 1) for r in requests]


def oracle_answers(name, data_dir, limit):
    proto = get_protocol(name)
    tasks = proto.load_tasks(str(data_dir))[:limit]
    answers = {}
    if name.startswith("gsm8k"):
        for t in tasks:
            answers[(t.prompt, None)] = (f" Some steps. The answer is {t.meta['expected']}.\n\nQuestion: more"
                                         if name == "gsm8k" else
                                         f"    return {t.meta['expected']}\n\n\n# Question: more")
        return answers
    problems = {p["task_id"]: p for p in load_problems(proto.benchmark, str(data_dir))}
    for t in tasks:
        p = problems[t.task_id]
        if name in ("humaneval", "humaneval+"):
            answers[(t.prompt, None)] = "\n" + p["canonical_solution"] + "\n\ndef unused():\n    pass\n"
        elif name in ("mbpp", "mbpp+"):
            answers[(t.prompt, None)] = p["canonical_solution"].replace("\r\n", "\n") + "\n[DONE]\n\nYou are an"
        else:
            extra = "        junk_line()\n" if "single-line" in name else ""
            answers[(t.prompt, t.suffix)] = p["canonical_solution"] + extra
    return answers


@pytest.mark.parametrize("name", ["humaneval", "mbpp", "humaneval-infilling-single-line",
                                  "humaneval-infilling-multi-line-spm", "humaneval-infilling-random-span",
                                  "gsm8k", "gsm8k-pal"])
def test_oracle_passes_every_task(name, data_dir, tmp_path):
    backend = Oracle(oracle_answers(name, data_dir, 3))
    summary = run_eval(EvalConfig(name, "oracle", limit=3, out=str(tmp_path / "run"), workers=2, progress=False),
                       backend=backend)
    assert summary["pass@1"] == 1.0 and summary["samples"] == 3, summary
    assert len(backend.calls) == 3 and all(c.temperature == 0 for c in backend.calls)
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["scores"]["pass@1"] == 1.0 and (tmp_path / "run" / "report.md").is_file()


@pytest.mark.parametrize("name", ["humaneval+", "mbpp+"])
def test_oracle_passes_evalplus(name, data_dir, tmp_path):
    backend = Oracle(oracle_answers(name, data_dir, 2))
    summary = run_eval(EvalConfig(name, "oracle", limit=2, out=str(tmp_path / "run"), workers=2, progress=False),
                       backend=backend)
    assert summary["pass@1"] == 1.0 and summary["base"]["pass@1"] == 1.0


# ----------------------------------------------------------------------------- real backends, tiny model
def tiny_checkpoint(path):
    tok = make_tiny_bpe()
    model = tiny_llama(tok.vocab_size, max_seq_len=4096)
    save_hf(model, path, tokenizer=tok)
    return model, tok


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    model, tok = tiny_checkpoint(d)
    return d, model, tok


@pytest.fixture(scope="module")
def server(ckpt):
    from codelm.serve import start_server

    _, model, tok = ckpt
    srv, _ = start_server(model, tok, "tiny")
    yield "http://%s:%d/v1" % srv.server_address[:2]
    srv.shutdown()
    srv.server_close()


def _check_run(out, n_samples):
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(samples) == len(results) == n_samples
    run = json.loads((out / "run.json").read_text())
    assert run["state"] == "done" and run["timing"]["generation_s"] >= 0 and "scoring_s" in run["timing"]
    return samples, run


ALL_PYTHON = ["humaneval", "humaneval+", "mbpp", "mbpp+", "humaneval-infilling-single-line",
              "humaneval-infilling-single-line-spm", "humaneval-infilling-multi-line", "humaneval-infilling-random-span",
              "gsm8k", "gsm8k-pal"]


def _toolchain(name):
    from codelm.evaluate.benchmarks import multipl_e

    why = name.startswith("multipl-e-") and multipl_e.unavailable(name.removeprefix("multipl-e-"))
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("name", ALL_PYTHON + ["multipl-e-js", "multipl-e-sh"])
def test_every_benchmark_on_native_backend(name, ckpt, data_dir, tmp_path):
    _toolchain(name)
    d, _, _ = ckpt
    out = tmp_path / "run"
    summary = run_eval(EvalConfig(name, str(d), limit=2, max_new_tokens=8, out=str(out), workers=2, progress=False))
    samples, run = _check_run(out, 2)
    assert run["backend"]["backend"] == "native" and "pass@1" in summary


@pytest.mark.parametrize("name", ALL_PYTHON + ["humaneval-infilling-multi-line-spm", "multipl-e-js"])
def test_every_benchmark_on_hf_backend(name, ckpt, data_dir, tmp_path):
    _toolchain(name)
    d, _, _ = ckpt
    out = tmp_path / "run"
    run_eval(EvalConfig(name, str(d), backend="hf", limit=2, max_new_tokens=8, out=str(out), workers=2,
                        progress=False))
    _check_run(out, 2)


@pytest.mark.parametrize("name,infill", [("humaneval", "suffix"), ("humaneval+", "suffix"), ("mbpp", "suffix"),
                                         ("mbpp+", "suffix"), ("humaneval-infilling-single-line", "suffix"),
                                         ("humaneval-infilling-single-line-spm", "tokens"),
                                         ("humaneval-infilling-multi-line", "tokens"),
                                         ("humaneval-infilling-random-span", "llama.cpp"),
                                         ("gsm8k", "suffix"), ("gsm8k-pal", "suffix"), ("multipl-e-js", "suffix")])
def test_benchmarks_through_codelm_serve(name, infill, ckpt, server, data_dir, tmp_path):
    _toolchain(name)
    d, _, _ = ckpt
    out = tmp_path / "run"
    run_eval(EvalConfig(name, server, backend="openai", limit=2, max_new_tokens=8, out=str(out), workers=2,
                        infill=infill, tokenizer=str(d), progress=False))
    samples, run = _check_run(out, 2)
    assert run["backend"]["url"] == server.removesuffix("/v1")


def test_backends_agree_on_greedy_samples(ckpt, server, data_dir, tmp_path):
    """Same checkpoint, same protocol: native, hf and openai (codelm serve) write the same samples."""
    d, _, _ = ckpt
    texts = {}
    for backend in ("native", "hf", "openai"):
        out = tmp_path / backend
        run_eval(EvalConfig("humaneval-infilling-single-line", server if backend == "openai" else str(d),
                            backend=backend, limit=3, max_new_tokens=8, out=str(out), workers=2, progress=False))
        texts[backend] = [json.loads(x)["completion"] for x in (out / "samples.jsonl").read_text().splitlines()]
    assert texts["native"] == texts["hf"] == texts["openai"]


def test_chat_route_extracts_code(ckpt, server, data_dir, tmp_path):
    d, _, _ = ckpt
    out = tmp_path / "run"
    run_eval(EvalConfig("humaneval", server, backend="openai", chat=True, limit=1, max_new_tokens=8, out=str(out),
                        workers=1, progress=False))
    samples, run = _check_run(out, 1)
    assert run["settings"]["chat"] and samples[0]["completion"].startswith("\n")


# ----------------------------------------------------------------------------- resume
class Killable:
    """Wraps a backend; raises KeyboardInterrupt (as a kill would stop the run) after `kill_after` batches."""

    name = "native"

    def __init__(self, inner, kill_after=None):
        self.inner, self.kill_after, self.batches, self.seen = inner, kill_after, 0, []
        self.batch_size = 2

    def identity(self):
        return self.inner.identity()

    def generate(self, requests):
        if self.kill_after is not None and self.batches >= self.kill_after:
            raise KeyboardInterrupt
        self.batches += 1
        self.seen.extend((r.prompt, r.seed) for r in requests)
        return self.inner.generate(requests)


def test_resume_after_kill_generates_nothing_twice(ckpt, data_dir, tmp_path):
    d, model, tok = ckpt
    native = NativeBackend(model, tok, batch_size=2, source=str(d))
    cfg = dict(limit=3, n=2, max_new_tokens=6, workers=2, progress=False)
    whole = Killable(native)
    run_eval(EvalConfig("humaneval", str(d), out=str(tmp_path / "whole"), **cfg), backend=whole)

    first = Killable(native, kill_after=1)
    with pytest.raises(KeyboardInterrupt):
        run_eval(EvalConfig("humaneval", str(d), out=str(tmp_path / "cut"), **cfg), backend=first)
    with pytest.raises(CodelmError, match="--resume"):
        run_eval(EvalConfig("humaneval", str(d), out=str(tmp_path / "cut"), **cfg), backend=Killable(native))
    with pytest.raises(CodelmError, match="different settings"):
        run_eval(EvalConfig("humaneval", str(d), out=str(tmp_path / "cut"), resume=True,
                            **{**cfg, "max_new_tokens": 7}), backend=Killable(native))
    second = Killable(native)
    run_eval(EvalConfig("humaneval", str(d), out=str(tmp_path / "cut"), resume=True, **cfg), backend=second)
    assert len(first.seen) == 2 and len(second.seen) == 4 and not set(first.seen) & set(second.seen)
    read = lambda p: [json.loads(x) for x in p.read_text().splitlines()]
    assert read(tmp_path / "cut" / "samples.jsonl") == read(tmp_path / "whole" / "samples.jsonl")
    a = json.loads((tmp_path / "whole" / "report.json").read_text())
    b = json.loads((tmp_path / "cut" / "report.json").read_text())
    assert (a["scores"], a["per_task"]) == (b["scores"], b["per_task"])
    run = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert run["reused_from_cache"] == 2 and run["generated_this_session"] == 4


@pytest.mark.slow
def test_cli_eval_killed_with_sigkill_then_resumed(ckpt, data_dir, tmp_path):
    """A real `codelm eval` process killed mid-generation; --resume finishes without regenerating."""
    d, _, _ = ckpt
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "codelm.cli", "eval", "--benchmark", "humaneval", "--model", str(d), "--limit", "4",
            "--n", "4", "--max-new-tokens", "48", "--batch-size", "1", "--out", str(out), "--workers", "2"]
    env = {**os.environ, "CODELM_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = out / "generations.jsonl"
    # Bounded wait until a few generations are on disk: generous, since on a loaded 2-core machine the
    # process's start (torch's import) alone took over 30 s.
    deadline = time.monotonic() + 300
    while not (cache.exists() and len(cache.read_text().splitlines()) >= 4):
        assert proc.poll() is None, "eval finished before it could be killed"
        assert time.monotonic() < deadline, "eval wrote fewer than 3 generations in 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len([x for x in cache.read_text().splitlines()[1:] if x.endswith("}")])
    assert 0 < before < 16
    done = subprocess.run(argv + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["reused_from_cache"] >= before - 1 and run["reused_from_cache"] + run["generated_this_session"] == 16
    keys = [json.loads(x)["key"] for x in cache.read_text().splitlines()[1:]]
    assert len(keys) == len(set(keys)) == 16


def test_eval_cli_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "codelm.cli", "eval", "--benchmark", "nope", "--model", "x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown benchmark" in r.stderr and "Traceback" not in r.stderr


def test_every_protocol_is_scored_through_the_one_table():
    """Each protocol names a scorer of codelm.evaluate.scorers (one signature for all), and an unknown name
    is refused by name."""
    from codelm.evaluate import protocols
    from codelm.evaluate.scorers import SCORERS, ScoreOptions, score_samples

    names = protocols._protocols()
    assert len(names) > 20 and {p.scorer for p in names.values()} <= set(SCORERS)
    with pytest.raises(CodelmError, match="no scorer 'nope'"):
        score_samples("nope", "humaneval", "s.jsonl", "o.jsonl", ScoreOptions())

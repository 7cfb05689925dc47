"""Every command example of README.md and docs/*.md runs, as written, against a tiny model.

The examples are read from the fenced code blocks (```sh, ```bash and plain ```): every line that
starts with `codelm ` (with its `\\` continuation lines), plus `printf ... | codelm ...` pipelines.
Only the documented placeholders are replaced (PLACEHOLDERS, below); the files an example assumes
the reader has (a prompt file, samples to score, a run to report on) are made first (FILES and
SETUP). `[...]` marks optional flags in the README: the example runs without them. An example that
needs what a test machine does not have (a GPU-sized model, a server, hours of training) is listed in
NOT_RUN with the reason; any other example must exit 0, and a README example that is neither run nor
listed fails the test, so a new example cannot go untested by accident.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
from helpers import make_tiny_bpe, tiny_llama

from codelm.cli import main, unescape
from codelm.model.checkpoint import save_hf, save_meta
from codelm.train.recipe import find_recipe

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
DATA = Path(os.environ.get("CODELM_DATA_DIR", ROOT.parent / "shared" / "data"))

# Placeholder -> what it stands for here (whole shell words only).
PLACEHOLDERS = {
    "DIR": "model",  # a checkpoint folder (HF layout, with tokenizer)
    "path/to/checkpoint": "model",
    "MODEL": "model",
    "MODEL_DIR": "model",
    "META_DIR": "meta-model",  # a checkpoint in Meta's layout
    "HF_DIR": "converted",
    "DATA_DIR": str(FIXTURES),  # tests/fixtures holds apps/, ds1000/ and lcc/ in the documented layout
}

# Examples not run, with the reason (matched on the start of the example's text).
NOT_RUN = {
    "codelm corpus --out data/code": "scans the whole standard library (minutes here); "
                                     "tests/test_corpus.py runs the command on small folders",
    "codelm corpus --out runs/demo/corpus": "scans the standard library; see above",
    "codelm train recipes/": "minutes to hours of training (test_train.py and test_demo.py run the loop)",
    "codelm eval --benchmark humaneval --model path/to/checkpoint --out": "generates all 164 tasks; the "
                                                                         "--limit 10 example runs the same path",
    "codelm eval --benchmark humaneval --model path/to/checkpoint --n 200": "32,800 generations",
    "codelm eval --benchmark humaneval --model $M": "Code Llama 7B on a GPU",
    "codelm eval --benchmark mbpp      --model $M": "Code Llama 7B on a GPU",
    "codelm report runs/cl7b": "reports on the 7B runs above",
    "codelm eval --benchmark apps-introductory": "100 samples per problem (--n 100); tests/test_apps_ds1000_lcc.py",
    "codelm serve ": "a server runs until stopped; test_readme_serve_example starts the README's command",
    "codelm lab ": "minutes of training and evaluation (tests/test_lab.py, tests/test_longctx.py)",
    "codelm selfinstruct ": "needs a model server (tests/test_selfinstruct*.py run the pipeline)",
    "codelm chat --model runs/codellama-7b-instruct/final": "an instruct model trained by a recipe above",
    "codelm chat --url": "needs a model server (tests/test_chat.py)",
    "codelm eval --benchmark mbpp-instruct --model runs/": "an instruct model trained by a recipe above",
}
NEEDS_SERVER = re.compile(r"--backend openai|--model \$U")  # vLLM, llama.cpp, Ollama or codelm serve on a port

HUMANEVAL_SAMPLES = [
    {"task_id": "HumanEval/0", "completion": "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) "
                                             "for b in numbers[i + 1:])\n"},
    {"task_id": "HumanEval/0", "completion": "    return False\n"},
    {"task_id": "HumanEval/2", "completion": "    return number % 1.0\n"},
]
FILES = {
    "prompt.py": "def fizzbuzz(n: int):\n",
    "code.py": "def add(a, b):\n    <FILL>\n    return c\n",
    "samples.jsonl": "".join(json.dumps(s) + "\n" for s in HUMANEVAL_SAMPLES),
    "mbpp.jsonl": json.dumps({"task_id": "Mbpp/2", "completion":
                              "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n"}) + "\n",
}
# Runs that report examples read (codelm eval itself, small: the run folder is what matters).
SETUP = [
    ["eval", "--benchmark", "humaneval", "--model", "model", "--limit", "2", "--n", "2", "--max-new-tokens", "8",
     "--out", "runs/he-sampled", "--workers", "1"],
    ["eval", "--benchmark", "humaneval", "--model", "model", "--limit", "2", "--max-new-tokens", "8",
     "--out", "runs/other", "--workers", "1"],
]


def readme_examples() -> list[tuple[str, str]]:
    """(file, example) for every command example in README.md and docs/**/*.md, in order."""
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        blocks, lang, current = [], None, []
        for line in doc.read_text(encoding="utf-8").split("\n"):
            if line.startswith("```"):
                if lang is None:
                    lang, current = line[3:].strip(), []
                else:
                    if lang in ("sh", "bash", ""):
                        blocks.append(current)
                    lang = None
            elif lang is not None:
                current.append(line)
        for lines in blocks:
            i = 0
            while i < len(lines):
                line = lines[i]
                while line.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                line = line.strip()
                if line.startswith("codelm ") or re.match(r"printf .*\| *codelm ", line):
                    out.append((doc.relative_to(ROOT).as_posix(), line))
                i += 1
    return out


def _reason_not_run(example: str) -> str | None:
    for start, reason in NOT_RUN.items():
        if example.startswith(start):
            return reason
    if NEEDS_SERVER.search(example):
        return "needs a model server"
    return None


def _argv(example: str) -> tuple[list[str], str | None]:
    """The example as argv after `codelm` (placeholders replaced, [optional] parts left out) and its stdin."""
    stdin = None
    m = re.match(r"printf (.*?) *\| *(codelm .*)", example)
    if m:
        stdin = unescape(shlex.split(m.group(1))[0])
        example = m.group(2)
    example = re.sub(r" \[[^\]]*\]", "", example)
    words = shlex.split(example, comments=True)
    assert words[0] == "codelm"
    return [PLACEHOLDERS.get(w, w) for w in words[1:]], stdin


def _run(argv: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old_stdin = os.sys.stdin
    try:
        os.sys.stdin = io.StringIO(stdin if stdin is not None else "")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 2
    finally:
        os.sys.stdin = old_stdin
    return rc, out.getvalue(), err.getvalue()


def test_every_readme_example_is_run_or_listed_with_a_reason():
    examples = readme_examples()
    assert len(examples) > 40  # the parser found the blocks
    starts = {start for start in NOT_RUN}
    used = {start for start in starts if any(e.startswith(start) for _, e in examples)}
    assert used == starts, f"NOT_RUN entries that match no example any more: {sorted(starts - used)}"


def test_the_readme_builds_the_corpus_that_recipes_demo_reads_before_training_on_it():
    """`codelm train recipes/demo.toml` is not run here (minutes), but the corpus the README builds
    just before it is the one the recipe reads."""
    import tomllib

    examples = [e for _, e in readme_examples()]
    train = examples.index("codelm train recipes/demo.toml")
    corpus = [e for e in examples[:train] if e.startswith("codelm corpus ")][-1]
    words = shlex.split(corpus, comments=True)
    recipe = tomllib.loads(find_recipe("recipes/demo.toml").read_text())
    assert words[words.index("--out") + 1] in [s["path"] for s in recipe["data"]["sources"]]


@pytest.mark.slow
def test_readme_examples_run_as_written(tmp_path, monkeypatch):
    if not (DATA / "humaneval").is_dir() or not (DATA / "mbppplus").is_dir():
        pytest.skip(f"benchmark data not found in {DATA} (set CODELM_DATA_DIR)")
    monkeypatch.setenv("CODELM_DATA_DIR", str(DATA))
    monkeypatch.chdir(tmp_path)
    tok = make_tiny_bpe()
    model = tiny_llama(tok.vocab_size)
    save_hf(model, tmp_path / "model", tokenizer=tok)
    save_meta(model, tmp_path / "meta-model", num_shards=2, tokenizer=tok)
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    for argv in SETUP:
        rc, _, err = _run(argv)
        assert rc == 0, (argv, err)

    ran, failures = [], []
    for doc, example in readme_examples():
        if _reason_not_run(example):
            continue
        argv, stdin = _argv(example)
        rc, out, err = _run(argv, stdin)
        ran.append(example)
        if rc != 0 or "Traceback" in err or "does not fit" in out:
            failures.append(f"{doc}: {example}\n  exit {rc}: {err.strip()[-500:]}")
    assert not failures, "README examples that fail:\n" + "\n".join(failures)
    assert len(ran) >= 20, ran

    # What the examples promise: escapes typed in quotes are newlines; the outputs are there.
    rc, out, _ = _run(["infill", "--model", "model", "--prefix", "def f(x):\\n    ", "--suffix", "\\n    return y\\n",
                       "--max-new-tokens", "4", "--no-stream"])
    assert rc == 0 and out.startswith("def f(x):\n    ") and out.endswith("\n    return y\n")
    assert (tmp_path / "converted" / "config.json").exists() and (tmp_path / "hf-folder" / "config.json").exists()
    assert (tmp_path / "model.gguf").stat().st_size > 0
    assert (tmp_path / "results.jsonl").exists() and (tmp_path / "samples.jsonl_results.jsonl").exists()
    assert (tmp_path / "runs" / "mbpp-10" / "report.md").exists()


def test_readme_serve_example_names_the_model_the_client_asks_for(tmp_path):
    """The README's `codelm serve` command and its Python client example agree on the model's name."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    doc, serve = next((d, e) for d, e in readme_examples() if e.startswith("codelm serve --model path/to/checkpoint"))
    readme = (ROOT / doc).read_text(encoding="utf-8")  # the page that shows the command and its client
    asked = set(re.findall(r'client\.completions\.create\(model="([^"]+)"', readme))
    assert len(asked) == 1, asked
    tok = make_tiny_bpe()
    save_hf(tiny_llama(tok.vocab_size), tmp_path / "checkpoint", tokenizer=tok)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv, _ = _argv(serve)
    argv[argv.index("--port") + 1] = str(port)  # a free port instead of 8000: the only change
    argv[argv.index("--model") + 1] = str(tmp_path / "checkpoint")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "codelm.cli", *argv, "--quiet"], stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
                    served = [m["id"] for m in json.load(r)["data"]]
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.25)
        assert served == sorted(asked)
        body = json.dumps({"model": served[0], "prompt": "def fib(n):\n", "max_tokens": 4, "temperature": 0}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert json.load(r)["choices"][0]["finish_reason"] in ("length", "stop")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(tmp_path / "checkpoint", ignore_errors=True)

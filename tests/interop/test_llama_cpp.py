"""llama.cpp opens `codelm export`'s GGUF files (llama-cpp-python and the C++ llama-server, both pinned in
bench/engines.py): tokenization, logits, greedy tokens, and `codelm eval` through both servers."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import (CODE_PROMPTS, HERE, MEASURED, N_TASKS, Server, assert_same_verdicts, codelm, codelm_env,
                      engine, free_port, native_eval, post)
from helpers import sample_snippets

from codelm.generate import complete_batch
from codelm.model.checkpoint import load

DTYPES = ("float32", "float16", "q8_0")
GREEDY = 32


@pytest.fixture(scope="module")
def ggufs(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    for dtype in DTYPES:
        codelm("export", "--format", "gguf", str(model_dir), str(out / f"codelm-{dtype}.gguf"), "--dtype", dtype)
    return {dtype: out / f"codelm-{dtype}.gguf" for dtype in DTYPES}


@pytest.fixture(scope="module")
def probes(ggufs, model_dir, tmp_path_factory):
    """llama-cpp-python's tokenization, logits and greedy tokens of each GGUF (its own venv)."""
    python = engine("llama-cpp-python")
    tok = load(model_dir).tokenizer
    texts = sample_snippets(200)
    prompts = [tok.encode(p, bos=True) for p in CODE_PROMPTS[:5]]
    work = tmp_path_factory.mktemp("probe")
    found = {}
    for dtype, path in ggufs.items():
        request = work / f"{dtype}.json"
        request.write_text(json.dumps({"gguf": str(path), "texts": texts if dtype == "float32" else [],
                                       "prompts": prompts, "greedy": GREEDY}))
        run = subprocess.run([str(python), str(HERE / "llama_cpp_probe.py"), str(request), str(work / f"{dtype}.npz")],
                             capture_output=True, text=True, timeout=1800)
        assert run.returncode == 0, f"llama-cpp-python failed on {path.name}: {run.stderr[-2000:]}"
        found[dtype] = dict(np.load(work / f"{dtype}.npz"))
    return {"texts": texts, "prompts": prompts, "found": found}


def test_tokenization_equals_codelm(probes, model_dir):
    tok = load(model_dir).tokenizer
    got = probes["found"]["float32"]
    differ = [t for i, t in enumerate(probes["texts"]) if got[f"tokens_{i}"].tolist() != tok.encode(t)]
    MEASURED["llama.cpp tokenization equal to codelm (200 code strings)"] = \
        f"{len(probes['texts']) - len(differ)}/{len(probes['texts'])}"
    assert not differ, f"{len(differ)} strings tokenize differently, e.g. {differ[:3]!r}"


def test_logits_and_greedy_tokens(probes, model_dir):
    loaded = load(model_dir)
    agree, ppl = {}, {}
    nll_ours, count = 0.0, 0
    for j, prompt in enumerate(probes["prompts"]):
        with torch.no_grad():
            ours = loaded.model(torch.tensor([prompt]))[0].float().numpy()
        target = np.array(prompt[1:])
        nll_ours += -_log_softmax(ours[:-1])[np.arange(len(target)), target].sum()
        count += len(target)
        for dtype, found in probes["found"].items():
            theirs = found[f"logits_{j}"]
            diff = float(np.abs(theirs - ours).max())
            MEASURED.setdefault(f"llama.cpp {dtype} logits max |diff| vs codelm", 0.0)
            MEASURED[f"llama.cpp {dtype} logits max |diff| vs codelm"] = max(
                MEASURED[f"llama.cpp {dtype} logits max |diff| vs codelm"], float(f"{diff:.3g}"))  # 3.8e-6, not 0.0
            if dtype == "float32":
                assert diff < 1e-3, f"prompt {j}: f32 logits differ by {diff}"
            agree.setdefault(dtype, [0, 0])
            agree[dtype][0] += int((theirs.argmax(-1) == ours.argmax(-1)).sum())
            agree[dtype][1] += len(prompt)
            ppl.setdefault(dtype, 0.0)
            ppl[dtype] += -_log_softmax(theirs[:-1])[np.arange(len(target)), target].sum()
    greedy = complete_batch(loaded.model, loaded.tokenizer, CODE_PROMPTS[:5], max_new_tokens=GREEDY)
    for dtype, found in probes["found"].items():
        same = sum(found[f"greedy_{j}"].tolist() == greedy[j].tokens for j in range(5))
        MEASURED[f"llama.cpp {dtype}: greedy generations equal to codelm"] = f"{same}/5"
        MEASURED[f"llama.cpp {dtype}: argmax agreement on prompt positions"] = f"{agree[dtype][0]}/{agree[dtype][1]}"
        MEASURED[f"llama.cpp {dtype}: perplexity on the prompts (codelm fp32 {np.exp(nll_ours / count):.3f})"] = \
            round(float(np.exp(ppl[dtype] / count)), 3)
    assert MEASURED["llama.cpp float32: greedy generations equal to codelm"] == "5/5"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def llama_cpp_python_server(ggufs, tmp_path_factory):
    python = engine("llama-cpp-python")
    port = free_port()
    cmd = [str(python), "-m", "llama_cpp.server", "--model", str(ggufs["float32"]), "--model_alias", "codelm",
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2",
           "--type_k", "0", "--type_v", "0"]  # an f32 KV cache (llama.cpp's default f16 moves f32 logits ~2e-3)
    with Server(cmd, port, tmp_path_factory.mktemp("lcp") / "server.log", timeout=300) as url:
        yield url


def _humaneval_through(url: str, model_dir, evals, name: str, label: str) -> None:
    """codelm eval --backend openai against a server: the same verdicts and completions as native."""
    native = native_eval(model_dir, "humaneval", evals)
    out = evals / f"{name}-humaneval"
    codelm("eval", "--benchmark", "humaneval", "--backend", "openai", "--model", url + "/v1",
           "--limit", str(N_TASKS), "--out", str(out), "--force", "--concurrency", "1")
    assert_same_verdicts(native, out, label)


def test_llama_cpp_python_server_humaneval_verdicts(llama_cpp_python_server, model_dir, evals):
    _humaneval_through(llama_cpp_python_server, model_dir, evals, "llama-cpp-python",
                       "llama-cpp-python server HumanEval first 20 (f32, f32 KV cache)")


@pytest.mark.parametrize("mode", ["suffix", "tokens", "llama.cpp"])
def test_llama_cpp_python_server_infilling_is_refused(llama_cpp_python_server, model_dir, tmp_path, mode):
    """It cannot infill correctly (text prompts only; token 0 for PRE/SUF/MID in its suffix prompt; no /infill):
    codelm says so in one line before sending anything, instead of retrying a 500 or scoring wrong text."""
    run = subprocess.run([sys.executable, "-m", "codelm.cli", "eval",
                          "--benchmark", "humaneval-infilling-single-line", "--backend", "openai", "--model",
                          llama_cpp_python_server + "/v1", "--infill", mode, "--tokenizer", str(model_dir),
                          "--limit", "2", "--out", str(tmp_path / "x")], capture_output=True, text=True,
                         env=codelm_env())
    assert run.returncode == 2, run.stderr
    assert "llama-cpp-python's server cannot infill correctly" in run.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def llama_server(ggufs, tmp_path_factory):
    binary = engine("llama-server")
    port = free_port()
    cmd = [str(binary), "-m", str(ggufs["float32"]), "--host", "127.0.0.1", "--port", str(port), "-c", "2048",
           "-np", "1", "-t", "2", "--alias", "codelm"]
    with Server(cmd, port, tmp_path_factory.mktemp("llama-server") / "server.log", ready_path="/health",
                timeout=300) as url:
        yield url


def test_llama_server_humaneval_verdicts(llama_server, model_dir, evals):
    _humaneval_through(llama_server, model_dir, evals, "llama-server", "llama-server HumanEval first 20")


def test_llama_server_infill_verdicts(llama_server, model_dir, evals):
    benchmark = "humaneval-infilling-single-line"
    native = native_eval(model_dir, benchmark, evals)
    out = evals / f"llama-server-{benchmark}"
    codelm("eval", "--benchmark", benchmark, "--backend", "openai", "--model", llama_server, "--infill", "llama.cpp",
           "--limit", str(N_TASKS), "--out", str(out), "--force", "--concurrency", "1")
    assert_same_verdicts(native, out, f"llama-server {benchmark} first 20 (/infill)")


def test_llama_server_decode_speed(llama_server, model_dir):
    """Batch-1 decode tokens/s of llama-server next to codelm's native engine, same model, same machine."""
    loaded = load(model_dir)
    prompt, n = CODE_PROMPTS[0], 128
    out = post(llama_server + "/completion", {"prompt": prompt, "n_predict": n, "temperature": 0.0,
                                              "ignore_eos": True, "cache_prompt": False})
    theirs = out["timings"]["predicted_per_second"]
    t0 = time.perf_counter()
    gen = complete_batch(loaded.model, loaded.tokenizer, [prompt], max_new_tokens=n)[0]
    ours = len(gen.tokens) / (time.perf_counter() - t0)
    MEASURED["decode tok/s at batch 1 (llama-server f32 / codelm complete f32)"] = \
        f"{theirs:.1f} / {ours:.1f} (ratio {theirs / ours:.2f}; codelm's time includes its prefill)"
    assert theirs > 0 and ours > 0

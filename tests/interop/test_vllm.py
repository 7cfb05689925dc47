"""vLLM (CPU build, pinned in bench/engines.py) serves the codelm base checkpoint as saved (its chat route,
on the instruct model: test_vllm_chat.py, a module of its own so the two servers never run at once)."""
import pytest
from conftest import (CODE_PROMPTS, MEASURED, N_TASKS, NEUTRAL, assert_same_verdicts, codelm, first_divergence,
                      native_eval, post, vllm_server)

from codelm.generate import complete_batch
from codelm.model.checkpoint import load


@pytest.fixture(scope="module")
def vllm(model_dir, tmp_path_factory):
    with vllm_server(model_dir, tmp_path_factory.mktemp("vllm")) as url:
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

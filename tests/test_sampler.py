"""Sampling: greedy = argmax step by step, top-p's reference set, stop strings across token boundaries."""
import pytest
import torch
from helpers import tiny_llama

from codelm.generate.engine import generate
from codelm.generate.sampler import SamplingParams, sample_next, top_k_filter, top_p_filter

VOCAB = 40


def tiny_model(seed=0):
    return tiny_llama(VOCAB, seed, max_seq_len=128)


def char_decode(ids):
    # A toy detokenizer: token i is the two characters chr(97 + i % 26) * 2 for i >= 4.
    return "".join(chr(97 + i % 26) * 2 for i in ids if i >= 4)


def _argmax_step_by_step(m, prompt, n):
    """The plain path: the model's own forward pass over the whole sequence, once per new token."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(m(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("config", [{}, {"position_encoding": "alibi"}, {"n_kv_heads": 4}, {"n_kv_heads": 1}])
def test_greedy_equals_argmax_step_by_step(config):
    """The engine's decoding step (fused layout, in-place RoPE, one cache write per layer) picks the plain
    path's tokens: alone (every row at one position) and beside rows at other positions (masked)."""
    m = tiny_llama(VOCAB, 0, max_seq_len=128, **config)
    prompts = [[1, 5, 9, 12, 7], [1, 6], [1, 11, 13, 17, 2, 2, 9, 30, 4]]
    g = generate(m, prompts[:1], SamplingParams(max_new_tokens=12), stop_ids=set(), decode=char_decode)[0]
    assert g.tokens == _argmax_step_by_step(m, prompts[0], 12)
    assert g.finish_reason == "length"
    batch = generate(m, prompts, SamplingParams(max_new_tokens=12), stop_ids=set(), decode=char_decode)
    assert [b.tokens for b in batch] == [_argmax_step_by_step(m, p, 12) for p in prompts]


def test_a_batch_gives_same_tokens_as_single_rows():
    m = tiny_model(1)
    prompts = [[1, 5, 9, 12, 7, 3, 3, 8], [1, 6], [1, 11, 13, 17]]
    batch = generate(m, prompts, SamplingParams(max_new_tokens=10), stop_ids=set(), decode=char_decode)
    for p, g in zip(prompts, batch):
        alone = generate(m, [p], SamplingParams(max_new_tokens=10), stop_ids=set(), decode=char_decode)[0]
        assert g.tokens == alone.tokens


def test_top_p_keeps_reference_set():
    probs = torch.tensor([[0.05, 0.4, 0.25, 0.2, 0.1]])
    # sorted: .4 .25 .2 .1 .05; preceding mass: 0 .4 .65 .85 .95 -> with p=0.6 keep .4,.25 (.65 > .6 drops .2)
    out = top_p_filter(probs, 0.6)
    assert torch.allclose(out, torch.tensor([[0, 0.4 / 0.65, 0.25 / 0.65, 0, 0]]))
    out = top_p_filter(probs, 0.65 + 1e-6)  # preceding mass .65 is not > p: .2 stays
    assert (out > 0).tolist() == [[False, True, True, True, False]]
    assert torch.equal(top_p_filter(probs, 1.0), probs)
    assert (top_p_filter(probs, 0.01) > 0).sum() == 1  # the top token always survives


def _sorted_top_p(probs, p):
    """top_p_filter's definition, by a full sort."""
    sp, idx = probs.sort(dim=-1, descending=True)
    sp = sp.masked_fill(sp.cumsum(-1) - sp > p, 0.0)
    out = torch.zeros_like(probs).scatter_(-1, idx, sp)
    return out / out.sum(-1, keepdim=True)


@pytest.mark.parametrize("temperature", [0.1, 0.8, 3.0, 50.0])
def test_the_nucleus_found_among_the_top_tokens_is_the_sorted_ones(temperature):
    """nucleus widens its top-k (256, 1024, 4096, all 5000) until the kept mass exceeds p: the same set
    and probabilities as sorting the whole vocabulary, peaked or flat; draws come from it only."""
    torch.manual_seed(3)
    probs = torch.softmax(torch.randn(3, 5000) * 3 / temperature, dim=-1)
    for p in (0.05, 0.5, 0.95, 0.999):
        got, ref = top_p_filter(probs, p), _sorted_top_p(probs, p)
        assert torch.equal(got > 0, ref > 0) and torch.allclose(got, ref, rtol=1e-5, atol=1e-8)
    params = SamplingParams(temperature=1.0, top_p=0.5)
    logits = probs.log()[:1]
    kept = set(torch.nonzero(_sorted_top_p(probs[:1], 0.5)[0]).flatten().tolist())
    g = torch.Generator().manual_seed(0)
    drawn = {int(sample_next(logits, params, g)) for _ in range(200)}
    assert drawn <= kept and (len(drawn) > 1 or len(kept) == 1)


def test_top_k_and_seed_reproducible():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5]])
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[True, False, False, True]]
    m = tiny_model(2)
    p = SamplingParams(max_new_tokens=15, temperature=1.0, top_p=0.9, top_k=10, seed=123)
    a = generate(m, [[1, 4, 5]], p, stop_ids=set(), decode=char_decode)[0].tokens
    b = generate(m, [[1, 4, 5]], p, stop_ids=set(), decode=char_decode)[0].tokens
    c = generate(m, [[1, 4, 5]], SamplingParams(max_new_tokens=15, temperature=1.0, seed=124), stop_ids=set(),
                 decode=char_decode)[0].tokens
    assert a == b and a != c


def test_stop_string_split_across_tokens_is_cut():
    m = tiny_model()
    free = generate(m, [[1, 5, 9]], SamplingParams(max_new_tokens=20), stop_ids=set(), decode=char_decode)[0]
    text = free.text
    assert len(text) >= 12
    # A stop string that starts in the middle of one token and ends inside the next.
    stop = text[5:8]
    assert len(stop) == 3
    first = text.find(stop)
    streamed = []
    g = generate(m, [[1, 5, 9]], SamplingParams(max_new_tokens=20, stop=("zzzz-never", stop)), stop_ids=set(),
                 decode=char_decode, on_text=lambda r, t: streamed.append(t))[0]
    assert g.text == text[:first]
    assert g.finish_reason == "stop_string" and g.stop_hit == stop
    assert "".join(streamed) == g.text  # the stream never showed the stop string
    assert char_decode(g.tokens).startswith(g.text)


def test_stop_token_ends_row_only():
    m = tiny_model()
    free = generate(m, [[1, 5, 9], [1, 7]], SamplingParams(max_new_tokens=8), stop_ids=set(), decode=char_decode)
    stop_tok = free[0].tokens[3]
    g = generate(m, [[1, 5, 9], [1, 7]], SamplingParams(max_new_tokens=8), stop_ids={stop_tok}, decode=char_decode)
    assert g[0].tokens == free[0].tokens[: free[0].tokens.index(stop_tok)]
    assert g[0].finish_reason == "stop_token"
    if stop_tok not in free[1].tokens:
        assert g[1].tokens == free[1].tokens


def test_bad_params():
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1)

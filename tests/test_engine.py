"""The native engine: continuous batching equals one-at-a-time generation; bf16/int8 weights stay near fp32;
a CPU without bf16 units falls back."""
import pytest
import torch
from helpers import make_tiny_bpe, tiny_llama

from codelm.errors import ConfigError
from codelm.generate import weights
from codelm.generate.backends import Request, generate_all
from codelm.generate.backends.native import NativeBackend
from codelm.generate.engine import Engine, Row, generate, prepared
from codelm.generate.prompts import completion_tokens, infilling_tokens
from codelm.generate.sampler import SamplingParams
from codelm.generate.weights import EngineConfig

PROMPTS = ["def add(a, b):\n", "import os\n\nclass Path", "x = [", "for i in range(10):\n    if i % 2",
           "# Return the sum of a list\ndef total(xs):\n    return", "while True:", "print(", "def f():\n    '''"]


@pytest.fixture(scope="module")
def tok():
    return make_tiny_bpe()


@pytest.fixture(scope="module")
def model(tok):
    m = tiny_llama(tok.vocab_size, seed=3)
    with torch.no_grad():  # sharper logits, so that greedy choices are never near ties
        m.output.weight.mul_(20)
    return m


def _rows(tok, settings, stop_ids=None):
    """One row per (prompt tokens, params): each alone in an engine, and all in one engine of 3 slots."""
    return [Row(p, params, frozenset(stop_ids or {tok.eos_id}), tok.decode_infilling, params.max_new_tokens,
                seed=params.seed) for p, params in settings]


def _alone_and_together(model, tok, settings, stop_ids=None, slots=3):
    alone = [Engine(model, EngineConfig(max_batch=1)).run(_rows(tok, [s], stop_ids))[0] for s in settings]
    together = Engine(model, EngineConfig(max_batch=slots)).run(_rows(tok, settings, stop_ids))
    return alone, together


def _same(a, b):
    assert [(g.tokens, g.text, g.finish_reason, g.stop_hit) for g in a] == \
           [(g.tokens, g.text, g.finish_reason, g.stop_hit) for g in b]


def test_continuous_batching_equals_one_at_a_time_greedy_and_sampled(model, tok):
    # Mixed prompt lengths, token limits, greedy and seeded sampling in one batch; 8 rows share 3 slots,
    # so slots are freed and refilled while other rows are mid-generation.
    settings = []
    for i, text in enumerate(PROMPTS):
        sampled = i % 2 == 1
        settings.append((completion_tokens(tok, text), SamplingParams(
            max_new_tokens=[5, 17, 9, 30, 12, 3, 21, 8][i], temperature=0.9 if sampled else 0.0,
            top_p=0.9 if i % 4 == 1 else 1.0, top_k=20 if i == 3 else 0, seed=100 + i if sampled else None)))
    alone, together = _alone_and_together(model, tok, settings)
    _same(alone, together)
    assert all(len(g.tokens) <= params.max_new_tokens for g, (_, params) in zip(together, settings))
    assert sum(g.finish_reason == "length" for g in together) >= 4  # rows of different lengths ran to their limit
    # The same seed gives the same sample again; another seed another one.
    again = Engine(model, EngineConfig(max_batch=2)).run(_rows(tok, settings))
    _same(together, again)
    p, params = settings[1]
    other = Engine(model).run(_rows(tok, [(p, SamplingParams(**{**params.__dict__, "seed": 7}))]))[0]
    assert other.tokens != together[1].tokens


def test_stop_strings_and_stop_tokens_per_row(model, tok):
    plain = [(completion_tokens(tok, t), SamplingParams(max_new_tokens=24)) for t in PROMPTS]
    texts = [g.text for g in Engine(model).run(_rows(tok, plain))]
    # A stop string from the middle of some rows' text: those rows stop there, the others run on.
    stop = next(t[6:9] for t in texts if len(t) > 12 and t[6:9].strip())
    settings = [(p, SamplingParams(max_new_tokens=24, stop=(stop,))) for p, _ in plain]
    alone, together = _alone_and_together(model, tok, settings)
    _same(alone, together)
    hit = [g for g in together if g.finish_reason == "stop_string"]
    assert hit and all(g.stop_hit == stop and stop not in g.text for g in hit)
    assert any(g.finish_reason == "length" for g in together)
    # A stop token: the id each row would pick third ends that row early.
    first = Engine(model).run(_rows(tok, plain))
    stop_id = first[0].tokens[2]
    alone, together = _alone_and_together(model, tok, plain, stop_ids={stop_id})
    _same(alone, together)
    assert together[0].finish_reason == "stop_token" and together[0].tokens == first[0].tokens[:2]


def test_infilling_rows_stop_at_eot_as_alone(model, tok):
    pairs = [("def add(a, b):\n    ", "\n    return c\n"), ("x = ", "\nprint(x)\n"), ("import ", "\n"),
             ("class A:\n    def __init__(self", "        self.a = a\n")]
    infill = [(infilling_tokens(tok, pre, suf), SamplingParams(max_new_tokens=20)) for pre, suf in pairs]
    first = Engine(model).run(_rows(tok, infill, {tok.eot_id, tok.eos_id}))
    # Make this model end its middles: where it would pick the 4th token of the first middle, EOT scores higher.
    m = tiny_llama(tok.vocab_size, seed=3)
    with torch.no_grad():
        m.output.weight.mul_(20)
        m.output.weight[tok.eot_id] = m.output.weight[first[0].tokens[3]] * 1.05
    alone, together = _alone_and_together(m, tok, infill, stop_ids={tok.eot_id, tok.eos_id}, slots=2)
    _same(alone, together)
    assert together[0].finish_reason == "stop_token" and len(together[0].tokens) == 3


def test_native_backend_continuous_equals_batches_of_one(model, tok):
    """What `codelm eval` runs: every request at once through the engine, each cached as it finishes."""
    reqs = [Request(p, max_new_tokens=6 + 3 * i, temperature=0.8 if i % 2 else 0.0, top_p=0.95, seed=i,
                    stop=("\n\n",)) for i, p in enumerate(PROMPTS)]
    reqs.append(Request("def add(a, b):\n    ", suffix="\n    return c\n", max_new_tokens=8))
    items = [(r, 0) for r in reqs]
    batched, stats = generate_all(NativeBackend(model, tok, batch_size=4), items, progress=False)
    one = NativeBackend(model, tok, batch_size=1)
    alone = [one.generate([r])[0] for r in reqs]
    assert [(c.text, c.finish_reason, c.tokens) for c in batched] == [(c.text, c.finish_reason, c.tokens) for c in alone]
    assert stats.generated == len(reqs) and stats.tokens == sum(c.tokens for c in alone)


def test_cache_holds_what_the_rows_need_not_the_context(model, tok):
    e = Engine(model, EngineConfig(max_batch=2))
    p = completion_tokens(tok, PROMPTS[0])
    e.run(_rows(tok, [(p, SamplingParams(max_new_tokens=10))]))
    # One row: one slot of prompt + 9 positions (the 10th token is never fed back), not 2 x max_seq_len.
    assert (e.k.shape[1], e.cap) == (1, len(p) + 9) and e.cap < model.config.max_seq_len


def _prefill_logits(model, prompt, config):
    e = Engine(model, config)
    e._reserve(len(prompt))
    with torch.inference_mode():
        return e._prefill(0, prompt)


@pytest.mark.parametrize("config, tolerance", [(EngineConfig(dtype="bfloat16"), 0.03),
                                               (EngineConfig(quantize="int8"), 0.03)])
def test_bf16_and_int8_logits_stay_near_fp32(tok, config, tolerance):
    m = tiny_llama(tok.vocab_size, seed=5)
    prompt = completion_tokens(tok, PROMPTS[4])
    ref = _prefill_logits(m, prompt, EngineConfig())
    got = _prefill_logits(m, prompt, config)
    # Tolerance: the largest logit error relative to the logits' spread (max |fp32 logit|).
    assert float((got - ref).abs().max() / ref.abs().max()) < tolerance
    assert torch.allclose(_prefill_logits(m, prompt, EngineConfig()), ref)  # fp32: the model's own numbers
    with torch.no_grad():
        assert torch.allclose(m(torch.tensor([prompt]))[0, -1], ref, atol=1e-4, rtol=1e-4)
    plan = weights.plan(config, torch.device("cpu"), torch.float32)
    assert plan.weights == ("int8" if config.quantize == "int8" else
                            "bfloat16" if weights.has_bf16_units() else "float32")


def test_without_bf16_units_bf16_falls_back_to_fp32_and_int8_runs(tok, monkeypatch, capsys):
    monkeypatch.setattr(weights, "has_bf16_units", lambda: False)
    m = tiny_llama(tok.vocab_size, seed=6)
    prompt = completion_tokens(tok, PROMPTS[2])
    ref = generate(m, [prompt], SamplingParams(max_new_tokens=8), {tok.eos_id}, tok.decode_infilling)[0]
    bf16 = generate(m, [prompt], SamplingParams(max_new_tokens=8), {tok.eos_id}, tok.decode_infilling,
                    engine=EngineConfig(dtype="bfloat16", max_batch=1))[0]
    assert bf16.tokens == ref.tokens  # the fp32 path, exactly
    assert "no bf16 units" in capsys.readouterr().err
    plan = weights.plan(EngineConfig(quantize="int8"), torch.device("cpu"), torch.float32)
    assert (plan.weights, plan.act_dtype) == ("int8", torch.float32)
    int8 = _prefill_logits(m, prompt, EngineConfig(quantize="int8"))
    fp32 = _prefill_logits(m, prompt, EngineConfig())
    assert float((int8 - fp32).abs().max() / fp32.abs().max()) < 0.03


def test_bad_engine_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="--quantize must be one of"):
        EngineConfig(quantize="int4")
    with pytest.raises(ConfigError, match="--max-batch"):
        EngineConfig(max_batch=0)
    with pytest.raises(ConfigError, match="float16 is a GPU path"):
        weights.plan(EngineConfig(dtype="float16"), torch.device("cpu"), torch.float32)
    with pytest.raises(ConfigError, match="float16 is a GPU path"):  # said before any checkpoint is read
        weights.load_for_engine("/nonexistent", EngineConfig(dtype="float16"), "cpu")
    with pytest.raises(ConfigError, match="int8 is a CPU path"):
        weights.check(EngineConfig(quantize="int8"), torch.device("cuda"))


def test_prepared_weights_follow_the_model_when_it_changes(tok):
    m = tiny_llama(tok.vocab_size, seed=7)
    config = EngineConfig(quantize="int8")
    first = prepared(m, config)
    assert prepared(m, config) is first  # prepared once
    with torch.no_grad():
        m.output.weight.mul_(2)  # trained in place, say
    again = prepared(m, config)
    assert again is not first and torch.equal(again.output.scale, first.output.scale * 2)


def test_fp32_without_room_for_a_transposed_copy_uses_the_models_tensors(tok, monkeypatch):
    """The [in, out] fp32 copy doubles the weights' memory; where half the available memory cannot hold
    it the engine multiplies by the model's own tensors, with the same greedy tokens."""
    m = tiny_llama(tok.vocab_size, seed=8)
    prompt = completion_tokens(tok, PROMPTS[0])
    roomy = weights.prepare(m, EngineConfig())
    monkeypatch.setattr(weights, "available_memory_bytes", lambda: 1024)
    tight = weights.prepare(m, EngineConfig())
    assert roomy.output.transposed and not tight.output.transposed
    assert tight.layers[0].wqkv.w.data_ptr() == m.layers[0].attention.wqkv.weight.data_ptr()  # no copy
    ref = generate(m, [prompt], SamplingParams(max_new_tokens=12), {tok.eos_id}, tok.decode_infilling)[0]
    same = tiny_llama(tok.vocab_size, seed=8)  # the same weights, prepared while memory is tight
    got = generate(same, [prompt], SamplingParams(max_new_tokens=12), {tok.eos_id}, tok.decode_infilling,
                   engine=EngineConfig(max_batch=2))[0]
    assert not prepared(same, EngineConfig()).output.transposed
    assert got.tokens == ref.tokens

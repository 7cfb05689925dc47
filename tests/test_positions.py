"""RoPE scaling variants against transformers, ALiBi slopes and caching, and what each method preserves."""
import math

import pytest
import torch

from codelm.errors import ConfigError
from codelm.model.checkpoint import load_checkpoint, save_hf
from codelm.model.config import ModelConfig
from codelm.model.llama import KVCache, Transformer
from codelm.model.positions import alibi_columns, alibi_slopes, rope_inv_freq

transformers = pytest.importorskip("transformers")

BASE = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=200, multiple_of=16, max_seq_len=32)
SCALINGS = {
    "linear": {"type": "linear", "factor": 4.0},
    "dynamic": {"type": "dynamic", "factor": 4.0},
    "yarn": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
}


def _pair(tmp_path, scaling, theta=10000.0):
    torch.manual_seed(0)
    ours = Transformer(ModelConfig(**BASE, rope_theta=theta, rope_scaling=scaling)).eval()
    save_hf(ours, tmp_path / "m")
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "m").float().eval()
    return ours, ref


@pytest.mark.parametrize("name", list(SCALINGS))
def test_scaled_rope_equals_transformers(tmp_path, name):
    ours, ref = _pair(tmp_path, SCALINGS[name])
    # 100 tokens: beyond the 32-token trained window, where the methods differ from plain RoPE.
    x = torch.randint(0, 200, (2, 100))
    with torch.no_grad():
        diff = (ref(x).logits - ours(x)).abs().max().item()
    assert diff <= 1e-4
    back, cfg = load_checkpoint(tmp_path / "m")  # the saved config round-trips
    assert cfg.rope_scaling["type"] == name and cfg.rope_scaling["factor"] == 4.0
    with torch.no_grad():
        assert torch.equal(back(x), ours(x))


def test_dynamic_ntk_leaves_the_trained_window_alone():
    torch.manual_seed(0)
    plain = Transformer(ModelConfig(**BASE)).eval()
    dyn = Transformer(ModelConfig(**BASE, rope_scaling=SCALINGS["dynamic"])).eval()
    dyn.load_state_dict(plain.state_dict())
    x = torch.randint(0, 200, (1, 32))
    with torch.no_grad():
        assert torch.equal(plain(x), dyn(x))
        long = torch.randint(0, 200, (1, 64))
        assert not torch.allclose(plain(long), dyn(long))


def test_linear_interpolation_maps_positions_into_the_window():
    # PI with factor 4 turns position 4p exactly as plain RoPE turns position p.
    f_plain, _ = rope_inv_freq(16, 1e4)
    f_pi, _ = rope_inv_freq(16, 1e4, {"type": "linear", "factor": 4.0})
    assert torch.allclose(f_pi * 40, f_plain * 10)


def test_yarn_keeps_high_frequencies_and_interpolates_low_ones():
    f_plain, _ = rope_inv_freq(64, 1e4)
    f_yarn, scale = rope_inv_freq(64, 1e4, SCALINGS["yarn"], max_seq_len=32)
    assert torch.equal(f_yarn[0], f_plain[0])  # fastest dim: extrapolated (unchanged)
    assert torch.allclose(f_yarn[-1], f_plain[-1] / 4)  # slowest: interpolated
    assert scale == pytest.approx(0.1 * math.log(4) + 1)


def test_raising_theta_is_a_config_change(tmp_path):
    ours, ref = _pair(tmp_path, None, theta=1e6)
    x = torch.randint(0, 200, (1, 80))
    with torch.no_grad():
        assert (ref(x).logits - ours(x)).abs().max().item() <= 1e-4


def test_bad_scaling_is_rejected():
    with pytest.raises(ConfigError, match="not supported"):
        ModelConfig(**BASE, rope_scaling={"type": "su"})
    with pytest.raises(ConfigError, match="positive 'factor'"):
        ModelConfig(**BASE, rope_scaling={"type": "linear"})
    with pytest.raises(ConfigError, match="position_encoding"):
        ModelConfig(**BASE, position_encoding="learned")


# ------------------------------------------------------------------ ALiBi
def test_alibi_slopes_power_of_two():
    s = alibi_slopes(8)
    assert torch.allclose(s, torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    assert torch.allclose(alibi_slopes(16)[:2], torch.tensor([2 ** -0.5, 2 ** -1.0]))


def test_alibi_slopes_other_head_counts():
    # 12 heads: the 8 slopes of 8 heads, then slopes 1, 3, 5, 7 (0-based 0, 2, 4, 6) of 16 heads.
    s = alibi_slopes(12)
    expect = [2.0 ** -(i + 1) for i in range(8)] + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]
    assert torch.allclose(s, torch.tensor(expect))
    assert len(alibi_slopes(6)) == 6 and torch.all(alibi_slopes(6)[1:] != alibi_slopes(6)[:-1])


def _alibi_model():
    torch.manual_seed(0)
    return Transformer(ModelConfig(**BASE, position_encoding="alibi")).eval()


def test_alibi_attention_matches_direct_formula():
    m = _alibi_model()
    attn = m.layers[0].attention
    x = torch.randn(1, 7, 64)
    with torch.no_grad():
        h = m.layers[0].attention_norm(x)
        qkv = attn.wqkv(h).view(1, 7, 8, 16).transpose(1, 2)
        q, k, v = qkv[:, :4], qkv[:, 4:6].repeat_interleave(2, 1), qkv[:, 6:].repeat_interleave(2, 1)
        scores = q @ k.transpose(-1, -2) / 4.0
        i = torch.arange(7)
        dist = (i[:, None] - i[None, :]).float()
        scores = scores - alibi_slopes(4)[:, None, None] * dist
        scores = scores.masked_fill(dist < 0, float("-inf"))
        expect = attn.wo((scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 7, 64))
        mask = m._alibi_mask(None, None, 1, 0, 7, x.device)
        got = attn(h, None, None, mask, None)
        fast = attn(h, None, None, None, None, alibi_columns(m.alibi_slopes, torch.arange(7)[None], 16))
    assert (got - expect).abs().max().item() <= 1e-5
    assert (fast - expect).abs().max().item() <= 1e-5


def _float_mask_path(m):
    """The same model forced through the explicit float mask (the path decoding and bf16 take)."""
    m._full_precision = lambda device: False
    return m


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_alibi_without_a_float_mask_equals_the_float_mask(n_kv_heads):
    # The lab's lengths (up to 2,048 tokens, where slope x distance reaches 1,024 on the steepest head):
    # logits, padded rows, a cached prefix and the gradients agree with the explicit-mask path to rounding.
    torch.manual_seed(0)
    cfg = ModelConfig(**dict(BASE, n_kv_heads=n_kv_heads, max_seq_len=128), position_encoding="alibi")
    m = Transformer(cfg).eval()
    ref = _float_mask_path(Transformer(cfg).eval())
    ref.load_state_dict(m.state_dict())
    x = torch.randint(0, 200, (2, 2048))
    with torch.no_grad():
        fast, slow = m(x), ref(x)
        assert (fast - slow).abs().max().item() <= 2e-4 * slow.abs().max().item()
        mask = torch.ones(2, 300, dtype=torch.long)
        mask[1, :37] = 0
        assert (m(x[:, :300], attention_mask=mask) - ref(x[:, :300], attention_mask=mask)).abs().max().item() <= 1e-4
        caches = [KVCache(cfg, 2, 400) for _ in range(2)]
        for model, cache in zip((m, ref), caches):
            model(x[:, :200], cache=cache)
        a, b = m(x[:, 200:400], cache=caches[0]), ref(x[:, 200:400], cache=caches[1])
        assert (a - b).abs().max().item() <= 1e-4
    for model in (m, ref):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:, :256]).flatten(0, 1), x[:, 1:257].flatten()).backward()
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-6), name


def test_alibi_cache_padding_and_generation():
    from codelm.generate import SamplingParams, generate

    m = _alibi_model()
    x = torch.randint(0, 200, (2, 20))
    with torch.no_grad():
        full = m(x)
        cache = KVCache(m.config, 2, 24)
        m(x[:, :12], cache=cache)
        for t in range(12, 20):
            assert (m(x[:, t:t + 1], cache=cache)[:, 0] - full[:, t]).abs().max().item() <= 1e-4
        mask = torch.ones(2, 20, dtype=torch.long)
        mask[1, :5] = 0
        padded = m(x, attention_mask=mask)
        assert (padded[1, 5:] - m(x[1:, 5:])[0]).abs().max().item() <= 1e-4
    prompts = [[1, 5, 9, 12, 7, 3], [1, 6]]
    batch = generate(m, prompts, SamplingParams(max_new_tokens=8), stop_ids=set(), decode=lambda ids: "")
    for p, g in zip(prompts, batch):
        alone = generate(m, [p], SamplingParams(max_new_tokens=8), stop_ids=set(), decode=lambda ids: "")[0]
        assert g.tokens == alone.tokens


def test_alibi_checkpoint_roundtrip(tmp_path):
    m = _alibi_model()
    save_hf(m, tmp_path / "a")
    back, cfg = load_checkpoint(tmp_path / "a")
    assert cfg.position_encoding == "alibi"
    x = torch.randint(0, 200, (1, 40))  # beyond max_seq_len: ALiBi needs no table
    with torch.no_grad():
        assert torch.equal(back(x), m(x))

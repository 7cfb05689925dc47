"""The network against transformers' LlamaForCausalLM on the same weights, and checkpoint round trips."""
import json

import pytest
import torch

import codelm
from codelm.errors import CheckpointError
from codelm.model.checkpoint import load_checkpoint, save_hf, save_meta
from codelm.model.config import ModelConfig
from codelm.model.llama import KVCache, Transformer

transformers = pytest.importorskip("transformers")

CONFIGS = {
    "mha": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=300, multiple_of=32),
    "gqa": dict(dim=96, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=300, multiple_of=32),
    "theta1e6": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=300, multiple_of=16, rope_theta=1e6),
}


def hf_model(tmp_path, **cfg):
    """A random transformers Llama, saved and reopened by codelm: both models, same weights."""
    c = ModelConfig(**cfg)
    hf_cfg = transformers.LlamaConfig(
        hidden_size=c.dim, intermediate_size=c.hidden_dim, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, vocab_size=c.vocab_size,
        rope_theta=c.rope_theta, max_position_embeddings=256, rms_norm_eps=c.norm_eps)
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(hf_cfg).float().eval()
    # Randomise the norms too, so a norm-name mix-up cannot hide behind all-ones weights.
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    ref.save_pretrained(tmp_path / "hf")
    ours, _ = load_checkpoint(tmp_path / "hf")
    return ref, ours


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_equal_transformers(tmp_path, name):
    ref, ours = hf_model(tmp_path, **CONFIGS[name])
    x = torch.randint(0, 300, (2, 37))
    with torch.no_grad():
        a = ref(x).logits
        b = ours(x)
    assert b.shape == (2, 37, 300)
    assert (a - b).abs().max().item() <= 1e-4


def test_left_padded_batch_equals_transformers(tmp_path):
    ref, ours = hf_model(tmp_path, **CONFIGS["gqa"])
    x = torch.randint(3, 300, (3, 20))
    mask = torch.ones_like(x)
    mask[0, :7] = 0
    mask[2, :1] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = ref(x, attention_mask=mask, position_ids=pos).logits
        b = ours(x, attention_mask=mask)
    real = mask.bool()
    assert (a[real] - b[real]).abs().max().item() <= 1e-4
    # A left-padded row gives the same logits as the row alone.
    with torch.no_grad():
        alone = ours(x[0:1, 7:])
    assert (alone[0] - b[0, 7:]).abs().max().item() <= 1e-4


def test_kv_cache_decoding_equals_full_forward():
    torch.manual_seed(0)
    cfg = ModelConfig(**CONFIGS["gqa"])
    m = Transformer(cfg).eval()
    x = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        full = m(x)
        cache = KVCache(cfg, 2, 32)
        step = [m(x[:, :16], cache=cache)[:, -1]]
        for t in range(16, 24):
            step.append(m(x[:, t:t + 1], cache=cache)[:, -1])
    inc = torch.stack(step[:-1] + [step[-1]], dim=1)
    assert (inc - full[:, 15:]).abs().max().item() <= 1e-4
    # A multi-token chunk after a cached prefix is also exact.
    with torch.no_grad():
        cache = KVCache(cfg, 2, 32)
        m(x[:, :10], cache=cache)
        chunk = m(x[:, 10:24], cache=cache)
    assert (chunk - full[:, 10:]).abs().max().item() <= 1e-4


def test_kv_cache_with_left_padding():
    torch.manual_seed(0)
    cfg = ModelConfig(**CONFIGS["mha"])
    m = Transformer(cfg).eval()
    x = torch.randint(3, 300, (2, 12))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :4] = 0
    with torch.no_grad():
        full = m(x, attention_mask=mask[:, :12])
        cache = KVCache(cfg, 2, 16)
        m(x[:, :8], attention_mask=mask[:, :8], cache=cache)
        for t in range(8, 12):
            out = m(x[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache)
            assert (out[:, 0] - full[:, t]).abs().max().item() <= 1e-4


def test_codelm_to_hf_roundtrip_opens_in_transformers(tmp_path):
    torch.manual_seed(1)
    m = Transformer(ModelConfig(**CONFIGS["gqa"], rope_theta=1e6)).eval()
    save_hf(m, tmp_path / "out")
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").float().eval()
    x = torch.randint(0, 300, (1, 30))
    with torch.no_grad():
        assert (ref(x).logits - m(x)).abs().max().item() <= 1e-4
    back, cfg = load_checkpoint(tmp_path / "out")
    assert cfg.rope_theta == 1e6 and cfg.n_kv_heads == 2
    with torch.no_grad():
        assert torch.equal(back(x), m(x))


def test_sharded_safetensors_roundtrip(tmp_path):
    torch.manual_seed(2)
    m = Transformer(ModelConfig(**CONFIGS["mha"])).eval()
    save_hf(m, tmp_path / "sh", max_shard_size="40KB")
    index = json.loads((tmp_path / "sh" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "sh").float().eval()
    back, _ = load_checkpoint(tmp_path / "sh")
    x = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        assert torch.equal(back(x), m(x))
        assert (ref(x).logits - m(x)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_meta_layout_any_shard_count(tmp_path, shards):
    torch.manual_seed(3)
    m = Transformer(ModelConfig(**CONFIGS["gqa"], rope_theta=1e6)).eval()
    for p in m.parameters():  # norms random too
        p.data.uniform_(-0.1, 0.1) if p.dim() == 1 else None
    save_meta(m, tmp_path / "meta", num_shards=shards)
    assert len(list((tmp_path / "meta").glob("consolidated.*.pth"))) == shards
    loaded = codelm.load(tmp_path / "meta")
    x = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), m(x))
    assert loaded.config.rope_theta == 1e6


def test_meta_interleaved_rope_matches_reference_math(tmp_path):
    """Meta's checkpoints pair adjacent q/k dims: rotating them in complex form must equal our layout."""
    torch.manual_seed(4)
    cfg = ModelConfig(**CONFIGS["mha"])
    m = Transformer(cfg).eval()
    save_meta(m, tmp_path / "meta", num_shards=1)
    sd = torch.load(tmp_path / "meta" / "consolidated.00.pth")
    h = torch.randn(5, cfg.dim)
    wq = sd["layers.0.attention.wq.weight"]
    q_meta = (h @ wq.T).view(5, cfg.n_heads, cfg.head_dim)
    freqs = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
    ang = torch.outer(torch.arange(5).float(), freqs)
    qc = torch.view_as_complex(q_meta.reshape(5, cfg.n_heads, -1, 2)) * torch.polar(torch.ones_like(ang), ang)[:, None]
    q_meta_rot = torch.view_as_real(qc).reshape(5, cfg.n_heads, cfg.head_dim)
    from codelm.model.positions import apply_rope, rope_cos_sin
    wq_ours = m.state_dict()["layers.0.attention.wqkv.weight"][: cfg.dim]
    q_ours = (h @ wq_ours.T).view(5, cfg.n_heads, cfg.head_dim).transpose(0, 1)
    cos, sin = rope_cos_sin(freqs, 5)
    q_ours_rot = apply_rope(q_ours, cos, sin).transpose(0, 1)
    # Same scores q·q' per head, whichever layout: compare Gram matrices.
    for hd in range(cfg.n_heads):
        g1 = q_meta_rot[:, hd] @ q_meta_rot[:, hd].T
        g2 = q_ours_rot[:, hd] @ q_ours_rot[:, hd].T
        assert torch.allclose(g1, g2, atol=1e-4)


def test_presets():
    assert round(ModelConfig.from_preset("codellama-7b").num_params() / 1e9, 2) == 6.74
    assert ModelConfig.from_preset("codellama-34b").hidden_dim == 22016
    assert ModelConfig.from_preset("codellama-70b").hidden_dim == 28672
    c = ModelConfig.from_preset("tiny")
    assert Transformer(c).num_params() == c.num_params()


# --------------------------------------------------------------- bad input
def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither config.json"):
        load_checkpoint(tmp_path / "empty")


def test_corrupt_weights(tmp_path):
    m = Transformer(ModelConfig(**CONFIGS["mha"]))
    save_hf(m, tmp_path / "c")
    f = tmp_path / "c" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read weights"):
        load_checkpoint(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: invalid JSON at line 1"):
        load_checkpoint(tmp_path / "c")


def test_config_disagrees_with_weights(tmp_path):
    m = Transformer(ModelConfig(**CONFIGS["mha"]))
    save_hf(m, tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["intermediate_size"] += 32
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"feed_forward.w13.weight' has shape"):
        load_checkpoint(tmp_path / "c")
    cfg["intermediate_size"] -= 32
    cfg["num_hidden_layers"] = 1
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unexpected tensor"):
        load_checkpoint(tmp_path / "c")


def test_meta_shard_missing_tensor(tmp_path):
    m = Transformer(ModelConfig(**CONFIGS["mha"]))
    save_meta(m, tmp_path / "m", num_shards=2)
    sd = torch.load(tmp_path / "m" / "consolidated.01.pth")
    del sd["layers.1.feed_forward.w2.weight"]
    torch.save(sd, tmp_path / "m" / "consolidated.01.pth")
    with pytest.raises(CheckpointError, match=r"consolidated.01.pth: tensor 'layers.1.feed_forward.w2.weight' is missing"):
        load_checkpoint(tmp_path / "m")


def test_cli_reports_bad_checkpoint_in_one_line(tmp_path, capsys):
    from codelm.cli import main

    rc = main(["convert", str(tmp_path / "missing"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no such checkpoint" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1

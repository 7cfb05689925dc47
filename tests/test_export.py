"""GGUF export, read back with the `gguf` package's reader: metadata, tokenizer, tensors and the RoPE layout."""
import json
import subprocess
import sys

import gguf
import numpy as np
import pytest
import regex
from helpers import make_tiny_bpe, make_tiny_sentencepiece, sample_snippets, tiny_llama

from codelm.errors import ConfigError, TokenizerError
from codelm.export import bpe_pre_tokenizer, export_gguf
from codelm.model.checkpoint import save_hf, to_hf_state_dict
from codelm.tokenizer import Tokenizer


def tiny(vocab, **kw):
    return tiny_llama(vocab, **kw)


def fields(reader):
    return {k: f.contents() for k, f in reader.fields.items()}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's HF converter: rotate-half rows -> interleaved rows, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_gguf_metadata_tokenizer_and_tensors(tmp_path):
    tok = make_tiny_bpe()
    model = tiny(tok.vocab_size)
    path = export_gguf(model, tok, tmp_path / "m.gguf", name="tiny")
    r = gguf.GGUFReader(str(path))
    f = fields(r)
    c = model.config
    assert f["general.architecture"] == "llama" and f["general.name"] == "tiny"
    assert (f["llama.embedding_length"], f["llama.block_count"], f["llama.feed_forward_length"]) == (64, 2, c.hidden_dim)
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"]) == (4, 2)
    assert f["llama.rope.dimension_count"] == 16 and f["llama.context_length"] == 512
    assert f["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert f["tokenizer.ggml.model"] == "gpt2" and len(f["tokenizer.ggml.tokens"]) == tok.vocab_size
    assert f["tokenizer.ggml.tokens"][tok.prefix_id] == "<PRE>" and f["tokenizer.ggml.token_type"][tok.eot_id] == 3
    assert (f["tokenizer.ggml.fim_pre_token_id"], f["tokenizer.ggml.fim_suf_token_id"],
            f["tokenizer.ggml.fim_mid_token_id"], f["tokenizer.ggml.eot_token_id"]) == \
        (tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id)
    assert f["tokenizer.ggml.bos_token_id"] == tok.bos_id and f["tokenizer.ggml.add_bos_token"] is True
    assert len(f["tokenizer.ggml.merges"]) > 100

    hf = {k: v.numpy() for k, v in to_hf_state_dict(model).items()}
    tensors = {t.name: np.asarray(t.data) for t in r.tensors}
    assert len(tensors) == 3 + 9 * c.n_layers
    assert np.array_equal(tensors["token_embd.weight"], hf["model.embed_tokens.weight"])
    assert np.array_equal(tensors["output.weight"], hf["lm_head.weight"])
    for i in range(c.n_layers):
        q = f"model.layers.{i}.self_attn."
        assert np.array_equal(tensors[f"blk.{i}.attn_q.weight"], llama_cpp_permute(hf[q + "q_proj.weight"], 4))
        assert np.array_equal(tensors[f"blk.{i}.attn_k.weight"], llama_cpp_permute(hf[q + "k_proj.weight"], 2))
        assert np.array_equal(tensors[f"blk.{i}.attn_v.weight"], hf[q + "v_proj.weight"])
        assert np.array_equal(tensors[f"blk.{i}.ffn_gate.weight"], hf[f"model.layers.{i}.mlp.gate_proj.weight"])
        assert np.array_equal(tensors[f"blk.{i}.ffn_down.weight"], hf[f"model.layers.{i}.mlp.down_proj.weight"])
        assert np.array_equal(tensors[f"blk.{i}.attn_norm.weight"], hf[f"model.layers.{i}.input_layernorm.weight"])


def _rope(x, pos, interleaved, theta=10000.0):
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    ang = pos * inv
    cos, sin = np.cos(ang), np.sin(ang)
    if interleaved:  # llama.cpp / Meta: pairs (2i, 2i+1)
        a, b = x[0::2], x[1::2]
        out = np.empty_like(x)
        out[0::2], out[1::2] = a * cos - b * sin, a * sin + b * cos
        return out
    a, b = x[: d // 2], x[d // 2:]  # HF / codelm: pairs (i, i + d/2)
    return np.concatenate([a * cos - b * sin, a * sin + b * cos])


def test_permuted_weights_give_the_same_attention_scores(tmp_path):
    """With llama.cpp's interleaved RoPE on the GGUF weights, q.k equals codelm's rotate-half RoPE on its own."""
    tok = make_tiny_bpe()
    model = tiny(tok.vocab_size)
    r = gguf.GGUFReader(str(export_gguf(model, tok, tmp_path / "m.gguf")))
    tensors = {t.name: np.asarray(t.data, dtype=np.float64) for t in r.tensors}
    hf = {k: v.double().numpy() for k, v in to_hf_state_dict(model).items()}
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(64), rng.standard_normal(64)
    hd = 16
    for head in range(4):
        kv = head // 2  # grouped-query attention: heads 0, 1 share key head 0
        rows_q, rows_k = slice(head * hd, (head + 1) * hd), slice(kv * hd, (kv + 1) * hd)
        ours = _rope(hf["model.layers.0.self_attn.q_proj.weight"][rows_q] @ x, 7, False) @ \
            _rope(hf["model.layers.0.self_attn.k_proj.weight"][rows_k] @ y, 3, False)
        theirs = _rope(tensors["blk.0.attn_q.weight"][rows_q] @ x, 7, True) @ \
            _rope(tensors["blk.0.attn_k.weight"][rows_k] @ y, 3, True)
        assert theirs == pytest.approx(ours, rel=1e-9, abs=1e-9)


def test_sentencepiece_vocabulary_fp16_and_linear_scaling(tmp_path):
    tok = Tokenizer.load(make_tiny_sentencepiece(tmp_path / "sp"))
    model = tiny(tok.vocab_size + 3, rope_scaling={"type": "linear", "factor": 4.0})  # padded embedding
    r = gguf.GGUFReader(str(export_gguf(model, tok, tmp_path / "sp.gguf", dtype="float16")))
    f = fields(r)
    assert f["tokenizer.ggml.model"] == "llama" and len(f["tokenizer.ggml.tokens"]) == tok.vocab_size + 3
    assert f["tokenizer.ggml.tokens"][tok.prefix_id] == "▁<PRE>" and f["tokenizer.ggml.token_type"][tok.prefix_id] == 4
    assert f["tokenizer.ggml.token_type"][tok.vocab_size] == 5  # a padding row, unused
    piece = tok.encode("def")[0]
    assert f["tokenizer.ggml.scores"][piece] == pytest.approx(tok._sp.get_score(piece))
    assert f["llama.rope.scaling.type"] == "linear" and f["llama.rope.scaling.factor"] == pytest.approx(4.0)
    types = {t.name: t.tensor_type for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_refusals(tmp_path):
    tok = make_tiny_bpe()
    with pytest.raises(ConfigError, match="float32, float16, q8_0"):
        export_gguf(tiny(tok.vocab_size), tok, tmp_path / "x.gguf", dtype="bfloat16")
    with pytest.raises(ConfigError, match="linear"):
        export_gguf(tiny(tok.vocab_size, rope_scaling={"type": "dynamic", "factor": 2.0}), tok, tmp_path / "y.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_export_cli(tmp_path):
    tok = make_tiny_bpe()
    save_hf(tiny(tok.vocab_size), tmp_path / "ckpt", tokenizer=tok)
    r = subprocess.run([sys.executable, "-m", "codelm.cli", "export", "--format", "gguf", str(tmp_path / "ckpt"),
                        str(tmp_path / "out.gguf")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert fields(gguf.GGUFReader(str(tmp_path / "out.gguf")))["general.name"] == "ckpt"
    r = subprocess.run([sys.executable, "-m", "codelm.cli", "export", "--format", "hf", str(tmp_path / "ckpt"),
                        str(tmp_path / "hf")], capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "hf" / "config.json").is_file()


# llama.cpp's "refact" pre-tokenizer (src/llama-vocab.cpp, vendored by llama-cpp-python 0.3.36): each regex
# splits every fragment the previous one left, matches and the text between them both kept.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
REFACT_REGEXES = (r"\p{N}", GPT2_REGEX)


def llama_cpp_split(text: str, regexes) -> list[str]:
    pieces = [text]
    for pattern in regexes:
        out = []
        for piece in pieces:
            start = 0
            for m in regex.finditer(pattern, piece):
                if m.start() > start:
                    out.append(piece[start:m.start()])
                out.append(m.group())
                start = m.end()
            if start < len(piece):
                out.append(piece[start:])
        pieces = out
    return pieces


def test_gguf_pre_tokenizer_splits_like_codelm(tmp_path):
    """The pre-tokenizer named in the GGUF splits 200 code strings exactly as codelm's tokenizer does
    ("default", written before, splits punctuation runs such as ' __' differently)."""
    tok = make_tiny_bpe()
    spec = json.loads(tok._payload)
    assert bpe_pre_tokenizer(spec, "t") == "refact"
    f = fields(gguf.GGUFReader(str(export_gguf(tiny(tok.vocab_size), tok, tmp_path / "m.gguf"))))
    assert f["tokenizer.ggml.pre"] == "refact"
    ours = tok._hf.pre_tokenizer
    texts = sample_snippets(200) + [" __init__", "x  = 12345", "  1", "a\n\n  b", "return{'k':[1,2]}"]
    to_chars = _gpt2_byte_chars()
    for text in texts:
        theirs = llama_cpp_split(text, REFACT_REGEXES)
        assert "".join(theirs) == text
        mine = [piece for piece, _ in ours.pre_tokenize_str(text)]
        assert mine == ["".join(to_chars[b] for b in p.encode("utf-8")) for p in theirs], text


def _gpt2_byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the ByteLevel alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def test_gguf_pre_tokenizer_refuses_unknown_rules():
    assert bpe_pre_tokenizer({"pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}, "t") == "gpt-2"
    with pytest.raises(TokenizerError, match="no llama.cpp pre-tokenizer.*Metaspace"):
        bpe_pre_tokenizer({"pre_tokenizer": {"type": "Metaspace"}}, "x/tokenizer.json")


def test_gguf_q8_0(tmp_path):
    tok = make_tiny_bpe()
    model = tiny(tok.vocab_size)
    r = gguf.GGUFReader(str(export_gguf(model, tok, tmp_path / "q.gguf", dtype="q8_0")))
    assert fields(r)["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    hf = {k: v.numpy() for k, v in to_hf_state_dict(model).items()}
    by_name = {t.name: t for t in r.tensors}
    t = by_name["blk.0.attn_v.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
    back = gguf.quants.dequantize(np.asarray(t.data), gguf.GGMLQuantizationType.Q8_0).reshape(hf[
        "model.layers.0.self_attn.v_proj.weight"].shape)
    original = hf["model.layers.0.self_attn.v_proj.weight"]
    blocks = np.abs(original).reshape(original.shape[0], -1, 32).max(axis=-1, keepdims=True)
    error = np.abs(back - original).reshape(blocks.shape[0], -1, 32)
    assert (error <= blocks / 127 + 1e-6).all()  # Q8_0: 8-bit values scaled by the block's max / 127
    assert by_name["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32

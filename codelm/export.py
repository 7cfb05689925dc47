"""`codelm export`: a codelm checkpoint as a GGUF file (llama.cpp, Ollama) or in the Hugging Face layout (vLLM).

GGUF ("llama" architecture, written with the `gguf` package):
  tensors   token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up,
            ffn_down}, output_norm, output; in F32 or F16 (norms stay F32, as llama.cpp's converter does).
            Q and K are permuted from the Hugging Face rotate-half layout (codelm's) to the interleaved
            RoPE layout llama.cpp computes with (the permutation of llama.cpp's HF converter, which is
            also Meta's own layout).
  metadata  llama.* shape keys, RoPE base and linear scaling, the tokenizer (SentencePiece -> "llama",
            with piece scores and types; a byte-level BPE -> "gpt2", with merges and the llama.cpp
            pre-tokenizer whose split rule equals the tokenizer.json's: codelm's digits-one-by-one
            then GPT-2 regex is llama.cpp's "refact", the bare GPT-2 regex is "gpt-2"; any other rule is
            refused rather than written as "default", which splits punctuation runs differently),
            BOS/EOS/UNK/PAD ids and the infilling ids (fim_pre/suf/mid, EOT) under the keys llama.cpp's
            own converter writes, so llama-server's /infill works.
  dtypes    float32; float16 (2-D weights); q8_0 (2-D weights whose rows are a multiple of 32 values, in
            llama.cpp's Q8_0 blocks, quantized with the `gguf` package; others F16). Norms stay F32.
Limits: llama.cpp ends every generation at EOT ("<EOT>" is on its end-of-generation list whatever the
metadata says), also a plain completion. ALiBi models cannot be exported (llama has no ALiBi).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import gguf
import numpy as np

from codelm.errors import CodelmError, ConfigError, TokenizerError
from codelm.files import claim_output, file_mode, mark_output
from codelm.model.checkpoint import load, save_hf, to_meta_state_dict

FORMATS = ("gguf", "hf")
GGUF_DTYPES = ("float32", "float16", "q8_0")


def gguf_tensors(model) -> dict:
    """GGUF name -> torch tensor (Q and K in llama.cpp's interleaved RoPE layout)."""
    meta = to_meta_state_dict(model)  # Meta layout == llama.cpp's (its HF converter permutes into it)
    out = {"token_embd.weight": meta["tok_embeddings.weight"], "output_norm.weight": meta["norm.weight"],
           "output.weight": meta["output.weight"]}
    names = {"attention_norm": "attn_norm", "attention.wq": "attn_q", "attention.wk": "attn_k",
             "attention.wv": "attn_v", "attention.wo": "attn_output", "ffn_norm": "ffn_norm",
             "feed_forward.w1": "ffn_gate", "feed_forward.w3": "ffn_up", "feed_forward.w2": "ffn_down"}
    for i in range(model.config.n_layers):
        for ours, theirs in names.items():
            out[f"blk.{i}.{theirs}.weight"] = meta[f"layers.{i}.{ours}.weight"]
    return out


def bpe_pre_tokenizer(spec: dict, source: str) -> str:
    """llama.cpp's name for the split rule of a byte-level BPE tokenizer.json (its `pre_tokenizer`).

    codelm's tokenizer splits every digit, then applies the GPT-2 regex (tokenizers' ByteLevel with
    use_regex): llama.cpp's "refact" rule is exactly that ("\\p{N}", then the GPT-2 regex). ByteLevel alone is
    "gpt-2". Anything else has no known llama.cpp equivalent here, and a wrong one tokenizes silently
    differently, so it is refused."""
    pre = spec.get("pre_tokenizer") or {}
    steps = list(pre.get("pretokenizers") or []) if pre.get("type") == "Sequence" else [pre]
    digits = bool(steps) and steps[0].get("type") == "Digits" and steps[0].get("individual_digits") is True
    rest = steps[1:] if digits else steps
    byte_level = (len(rest) == 1 and rest[0].get("type") == "ByteLevel" and rest[0].get("use_regex", True)
                  and not rest[0].get("add_prefix_space", False))
    if byte_level and not spec.get("normalizer"):
        return "refact" if digits else "gpt-2"
    shown = " + ".join(str(step.get("type")) for step in steps) or "none"
    raise TokenizerError(f"{source}: no llama.cpp pre-tokenizer is known to split text like this tokenizer.json "
                         f"(pre_tokenizer {shown}); GGUF export supports codelm's (Digits + ByteLevel) and "
                         "GPT-2's (ByteLevel)")


def _tokenizer_metadata(writer, tok, vocab_size: int) -> None:
    if tok.kind == "sentencepiece":
        proto = tok._sp_proto
        tokens = [p.piece.encode("utf-8") for p in proto.pieces]
        scores = [float(p.score) for p in proto.pieces]
        types = [int(p.type) for p in proto.pieces]  # SentencePiece's piece types use GGUF's numbering
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
    else:
        spec = json.loads(tok._payload)
        model = spec["model"]
        if model.get("type") != "BPE":
            raise TokenizerError(f"{tok.source}: only BPE tokenizer.json files can be exported to GGUF")
        by_id = {i: t for t, i in model["vocab"].items()}
        special = {}
        for added in spec.get("added_tokens", []):
            by_id[added["id"]] = added["content"]
            special[added["id"]] = added.get("special", True)
        n = max(by_id) + 1
        tokens = [by_id.get(i, f"[PAD{i}]").encode("utf-8") for i in range(n)]
        types = [int(gguf.TokenType.CONTROL) if special.get(i) else
                 int(gguf.TokenType.UNUSED) if i not in by_id else int(gguf.TokenType.NORMAL) for i in range(n)]
        scores = [0.0] * n
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(bpe_pre_tokenizer(spec, tok.source))
        writer.add_token_merges(merges)
    # The model's embedding may be larger than the tokenizer (padded vocabularies): name the extra rows.
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(0.0)
        types.append(int(gguf.TokenType.UNUSED))
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(tok.bos_id)
    writer.add_eos_token_id(tok.eos_id)
    if tok.unk_id is not None:
        writer.add_unk_token_id(tok.unk_id)
    if tok.pad_id is not None:
        writer.add_pad_token_id(tok.pad_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if tok.has_infilling:
        K = gguf.Keys.Tokenizer
        writer.add_uint32(K.FIM_PRE_ID, tok.prefix_id)
        writer.add_uint32(K.FIM_SUF_ID, tok.suffix_id)
        writer.add_uint32(K.FIM_MID_ID, tok.middle_id)
        writer.add_eot_token_id(tok.eot_id)


def export_gguf(model, tokenizer, path, name: str = "codelm", dtype: str = "float32") -> Path:
    """Write `model` (+ tokenizer) as a GGUF file at `path` (written to a temporary file, then renamed).
    `dtype`: float32, float16 or q8_0 (see the module docstring)."""
    c = model.config
    if getattr(c, "position_encoding", "rope") != "rope":
        raise ConfigError(f"GGUF export needs a RoPE model; this one uses {c.position_encoding}")
    _check_gguf_dtype(dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    try:
        writer.add_name(name)
        writer.add_context_length(c.max_seq_len)
        writer.add_embedding_length(c.dim)
        writer.add_block_count(c.n_layers)
        writer.add_feed_forward_length(c.hidden_dim)
        writer.add_rope_dimension_count(c.head_dim)
        writer.add_head_count(c.n_heads)
        writer.add_head_count_kv(c.n_kv_heads)
        writer.add_layer_norm_rms_eps(c.norm_eps)
        writer.add_rope_freq_base(c.rope_theta)
        writer.add_vocab_size(c.vocab_size)
        scaling = c.rope_scaling or {}
        kind = scaling.get("rope_type") or scaling.get("type")
        if kind == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(scaling["factor"]))
        elif kind not in (None, "default"):
            raise ConfigError(f"GGUF export supports linear RoPE scaling only, not {kind!r}")
        writer.add_file_type({"float32": gguf.LlamaFileType.ALL_F32, "float16": gguf.LlamaFileType.MOSTLY_F16,
                              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
        if tokenizer is not None:
            _tokenizer_metadata(writer, tokenizer, c.vocab_size)
        for gname, tensor in gguf_tensors(model).items():
            array = np.ascontiguousarray(tensor.detach().float().cpu().numpy())
            if dtype == "q8_0" and array.ndim == 2 and array.shape[-1] % Q8_0_BLOCK == 0:
                q = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
                writer.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                continue
            if dtype != "float32" and array.ndim == 2:
                array = array.astype(np.float16)
            writer.add_tensor(gname, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


Q8_0_BLOCK = 32  # values per Q8_0 block (one f16 scale + 32 int8)


def _check_gguf_dtype(dtype: str) -> None:
    if dtype not in GGUF_DTYPES:
        raise ConfigError(f"--dtype for GGUF must be one of {', '.join(GGUF_DTYPES)}, got {dtype}")


def export_main(model: str, out: str, *, format: str, dtype: str | None = None, name: str | None = None,
                force: bool = False) -> Path:
    """Entry point of `codelm export --format gguf|hf MODEL OUT`: returns OUT (the command line prints it)."""
    if format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}")
    if format == "hf":
        claim_output(out, "checkpoint", folder=True, force=force, inputs=[model], what="exported checkpoint")
    else:
        if Path(out).is_dir():
            raise CodelmError(f"{out} is a folder; give the GGUF file's path")
        if dtype is not None:
            _check_gguf_dtype(dtype)
        claim_output(out, "gguf", folder=False, force=force, inputs=[model], what="GGUF file")
    loaded = load(model)
    if format == "hf":
        if dtype == "q8_0":
            raise ConfigError("--dtype q8_0 is for GGUF files; the HF layout takes float32, float16 or bfloat16")
        save_hf(loaded.model, out, tokenizer=loaded.tokenizer, dtype=dtype)
        return Path(out)
    if loaded.tokenizer is None:
        print(f"codelm export: warning: {model} has no tokenizer; the GGUF file will not run in llama.cpp",
              file=sys.stderr)
    if Path(out).is_dir():
        raise CodelmError(f"{out} is a folder; give the GGUF file's path")
    export_gguf(loaded.model, loaded.tokenizer, out, name=name or Path(model).resolve().name,
                dtype=dtype or "float32")
    mark_output(out, "gguf")
    return Path(out)

"""Checkpoints in the Hugging Face layout (read/write) and Meta's layout (read, any shard count; write).

(Just over 500 lines: both layouts share the name maps, the q/k permutation and the atomic folder
writer, and a round trip HF <-> Meta is checked by reading them side by side.)

HF:   config.json, model.safetensors or model-0000i-of-0000n.safetensors + model.safetensors.index.json,
      tokenizer files. q/k in rotate-half layout (what codelm uses internally).
Meta: params.json, consolidated.NN.pth (one per model-parallel rank), tokenizer.model. Column-parallel
      weights (wq, wk, wv, w1, w3, output) are split along dim 0, row-parallel ones (wo, w2) and the
      embedding along dim 1, norms are replicated. q/k pair adjacent dims (interleaved RoPE).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from codelm.errors import CheckpointError
from codelm.files import DIR_MARKER, claim_output, current_umask, file_mode
from codelm.model.config import ModelConfig
from codelm.model.llama import Transformer
from codelm.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}


# ------------------------------------------------------------------ layouts
def _hf_names(n_layers: int):
    """(codelm name, [HF names concatenated along dim 0])."""
    yield "tok_embeddings.weight", ["model.embed_tokens.weight"]
    for i in range(n_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        yield p + "attention.wqkv.weight", [q + "self_attn.q_proj.weight", q + "self_attn.k_proj.weight",
                                           q + "self_attn.v_proj.weight"]
        yield p + "attention.wo.weight", [q + "self_attn.o_proj.weight"]
        yield p + "feed_forward.w13.weight", [q + "mlp.gate_proj.weight", q + "mlp.up_proj.weight"]
        yield p + "feed_forward.w2.weight", [q + "mlp.down_proj.weight"]
        yield p + "attention_norm.weight", [q + "input_layernorm.weight"]
        yield p + "ffn_norm.weight", [q + "post_attention_layernorm.weight"]
    yield "norm.weight", ["model.norm.weight"]
    yield "output.weight", ["lm_head.weight"]


def _split_sizes(config: ModelConfig, name: str) -> list[int] | None:
    if name.endswith("wqkv.weight"):
        hd = config.head_dim
        return [config.n_heads * hd, config.n_kv_heads * hd, config.n_kv_heads * hd]
    if name.endswith("w13.weight"):
        return [config.hidden_dim, config.hidden_dim]
    return None


def to_hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    out = {}
    for ours, theirs in _hf_names(model.config.n_layers):
        sizes = _split_sizes(model.config, ours)
        parts = sd[ours].split(sizes, dim=0) if sizes else [sd[ours]]
        for n, t in zip(theirs, parts):
            out[n] = t.contiguous()
    return out


def from_hf_state_dict(hf: dict[str, torch.Tensor], config: ModelConfig, source: str) -> dict[str, torch.Tensor]:
    hf = dict(hf)
    if "lm_head.weight" not in hf and "model.embed_tokens.weight" in hf:
        hf["lm_head.weight"] = hf["model.embed_tokens.weight"]  # tied embeddings
    out = {}
    for ours, theirs in _hf_names(config.n_layers):
        missing = [n for n in theirs if n not in hf]
        if missing:
            raise CheckpointError(f"{source}: tensor '{missing[0]}' is missing (config.json says "
                                  f"{config.n_layers} layers)")
        parts = [hf.pop(n) for n in theirs]
        out[ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    extra = [n for n in hf if not n.endswith("rotary_emb.inv_freq")]
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor '{extra[0]}' ({len(extra)} in all): "
                              "not a Llama checkpoint, or config.json has too few layers")
    return out


def _expected_shapes(config: ModelConfig) -> dict[str, tuple]:
    with torch.device("meta"):
        m = Transformer(config)
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _check_shapes(sd: dict, config: ModelConfig, source: str):
    for name, shape in _expected_shapes(config).items():
        got = tuple(sd[name].shape)
        if got != shape:
            raise CheckpointError(f"{source}: tensor '{name}' has shape {list(got)} but the config implies "
                                  f"{list(shape)} (dim={config.dim}, heads={config.n_heads}/{config.n_kv_heads}, "
                                  f"ffn={config.hidden_dim}, vocab={config.vocab_size})")


def build_model(config: ModelConfig, state_dict: dict, source: str, dtype=None, device="cpu") -> Transformer:
    _check_shapes(state_dict, config, source)
    with torch.device("meta"):
        model = Transformer(config)
    if dtype is not None:
        state_dict = {k: v.to(dtype) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, assign=True, strict=True)
    model.reset_rope()
    return model.to(device).eval()


# ----------------------------------------------------------- HF config.json
def config_to_hf(config: ModelConfig, dtype: torch.dtype) -> dict:
    d = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling,
        "max_position_embeddings": config.max_seq_len,
        "bos_token_id": config.bos_id,
        "eos_token_id": config.eos_id,
        "pad_token_id": config.pad_id,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if config.position_encoding != "rope":
        # transformers' Llama has no ALiBi: it would open this checkpoint with RoPE and wrong outputs.
        d["codelm_position_encoding"] = config.position_encoding
    return d


def config_from_hf(d: dict, source: str) -> ModelConfig:
    if d.get("model_type") not in (None, "llama", "code_llama"):
        raise CheckpointError(f"{source}: model_type '{d.get('model_type')}' is not a Llama architecture")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size"):
        if key not in d:
            raise CheckpointError(f"{source}: required field '{key}' is missing")
    # Every field read below is checked here, so a wrong type is one line naming the field.
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size",
                "num_key_value_heads", "max_position_embeddings", "head_dim"):
        v = d.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise CheckpointError(f"{source}: field '{key}' must be a positive integer, got {json.dumps(v)}")
    for key in ("rms_norm_eps", "rope_theta"):
        v = d.get(key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0):
            raise CheckpointError(f"{source}: field '{key}' must be a positive number, got {json.dumps(v)}")
    for key in ("rope_scaling", "rope_parameters"):
        if d.get(key) is not None and not isinstance(d[key], dict):
            raise CheckpointError(f"{source}: field '{key}' must be an object, got {json.dumps(d[key])}")
    for key in ("bos_token_id", "pad_token_id", "eos_token_id"):
        v = d.get(key)
        ids = v if key == "eos_token_id" and isinstance(v, list) and v else [v]
        if any(i is not None and (not isinstance(i, int) or isinstance(i, bool) or i < 0) for i in ids):
            raise CheckpointError(f"{source}: field '{key}' must be a token id (an integer >= 0), got {json.dumps(v)}")
    if d.get("hidden_act", "silu") != "silu" or d.get("attention_bias") or d.get("mlp_bias"):
        raise CheckpointError(f"{source}: hidden_act/attention_bias/mlp_bias differ from Llama's")
    # transformers 5 writes rope_parameters; checkpoints on the Hub carry rope_theta/rope_scaling.
    rope = d.get("rope_parameters") or {}
    theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    scaling = d.get("rope_scaling")
    kind = rope.get("rope_type") or rope.get("type")
    if kind and kind != "default":
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    if scaling:
        scaling = dict(scaling)
        scaling.setdefault("type", scaling.get("rope_type"))
    head_dim = d.get("head_dim")
    if head_dim is not None and head_dim != d["hidden_size"] // d["num_attention_heads"]:
        raise CheckpointError(f"{source}: head_dim={head_dim} differs from hidden_size/num_attention_heads")
    eos = d.get("eos_token_id", 2)
    try:
        return ModelConfig(
            dim=d["hidden_size"], n_layers=d["num_hidden_layers"], n_heads=d["num_attention_heads"],
            n_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"], vocab_size=d["vocab_size"],
            ffn_hidden_dim=d["intermediate_size"], norm_eps=d.get("rms_norm_eps", 1e-5), rope_theta=float(theta),
            rope_scaling=scaling or None, max_seq_len=d.get("max_position_embeddings", 4096),
            bos_id=d.get("bos_token_id", 1) if d.get("bos_token_id") is not None else 1,
            eos_id=eos[0] if isinstance(eos, list) else (eos if eos is not None else 2),
            pad_id=d.get("pad_token_id"), position_encoding=d.get("codelm_position_encoding", "rope"),
        )
    except Exception as e:
        raise CheckpointError(f"{source}: {e}") from None


# ----------------------------------------------------------------- writing
def _parse_size(s: str | int) -> int:
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMG]I?B|B)?\s*", s.upper())
    if not m:
        raise CheckpointError(f"cannot read size {s!r}: use e.g. 500MB or 5GB")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2) or "B"])


class _AtomicDir:
    """Write a directory's files into a temp sibling, then swap it in, so a crash leaves the old one intact."""

    def __init__(self, dst):
        self.dst = Path(dst)

    def __enter__(self) -> Path:
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dst.name}.tmp-", dir=self.dst.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False

        (self.tmp / DIR_MARKER).write_text(json.dumps({"kind": "checkpoint", "written_by": "codelm"}) + "\n")
        os.chmod(self.tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700
        for f in self.tmp.rglob("*"):
            if f.is_file():
                os.chmod(f, file_mode())  # safetensors writes 0600
        # A folder swap (files.py writes single files): the new folder takes the old one's place whole.
        if self.dst.exists():
            old = self.dst.with_name(f".{self.dst.name}.old-{os.getpid()}")
            os.replace(self.dst, old)
            os.replace(self.tmp, self.dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.dst)
        return False


def save_hf(model: Transformer, directory, tokenizer=None, dtype=None, max_shard_size: str | int = "5GB",
            extra_files: dict[str, str] | None = None) -> Path:
    """Save in the HF layout so transformers' LlamaForCausalLM.from_pretrained opens it."""
    sd = to_hf_state_dict(model)
    if dtype is not None:
        dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        sd = {k: v.to(dtype) for k, v in sd.items()}
    out_dtype = next(iter(sd.values())).dtype
    limit = _parse_size(max_shard_size)
    shards, cur, cur_size = [], {}, 0
    for name, t in sd.items():
        size = t.numel() * t.element_size()
        if cur and cur_size + size > limit:
            shards.append(cur)
            cur, cur_size = {}, 0
        cur[name] = t.detach().cpu().contiguous()
        cur_size += size
    shards.append(cur)
    with _AtomicDir(directory) as tmp:
        cfg = config_to_hf(model.config, out_dtype)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        gen = {"bos_token_id": model.config.bos_id, "eos_token_id": model.config.eos_id}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        meta = {"format": "pt"}
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata=meta)
        else:
            weight_map, total = {}, 0
            for i, shard in enumerate(shards, 1):
                fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / fname), metadata=meta)
                for n, t in shard.items():
                    weight_map[n] = fname
                    total += t.numel() * t.element_size()
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(directory)


def _permute_to_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """rotate-half → interleaved: within each head, dims (i, i+d/2) become (2i, 2i+1)."""
    out_dim, dim = w.shape
    hd = out_dim // n_heads
    return w.view(n_heads, 2, hd // 2, dim).transpose(1, 2).reshape(out_dim, dim)


def _permute_from_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    out_dim, dim = w.shape
    hd = out_dim // n_heads
    return w.view(n_heads, hd // 2, 2, dim).transpose(1, 2).reshape(out_dim, dim)


# Meta name → (split dim for model parallelism or None if replicated)
def _meta_layout(n_layers: int):
    yield "tok_embeddings.weight", 1
    for i in range(n_layers):
        p = f"layers.{i}."
        for n in ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3"):
            yield p + n + ".weight", 0
        yield p + "attention.wo.weight", 1
        yield p + "feed_forward.w2.weight", 1
        yield p + "attention_norm.weight", None
        yield p + "ffn_norm.weight", None
    yield "norm.weight", None
    yield "output.weight", 0


def to_meta_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    c = model.config
    sd = model.state_dict()
    out = {"tok_embeddings.weight": sd["tok_embeddings.weight"], "norm.weight": sd["norm.weight"],
           "output.weight": sd["output.weight"]}
    for i in range(c.n_layers):
        p = f"layers.{i}."
        q, k, v = sd[p + "attention.wqkv.weight"].split(_split_sizes(c, "wqkv.weight"), dim=0)
        out[p + "attention.wq.weight"] = _permute_to_meta(q, c.n_heads)
        out[p + "attention.wk.weight"] = _permute_to_meta(k, c.n_kv_heads)
        out[p + "attention.wv.weight"] = v
        out[p + "attention.wo.weight"] = sd[p + "attention.wo.weight"]
        w1, w3 = sd[p + "feed_forward.w13.weight"].split(c.hidden_dim, dim=0)
        out[p + "feed_forward.w1.weight"], out[p + "feed_forward.w3.weight"] = w1, w3
        out[p + "feed_forward.w2.weight"] = sd[p + "feed_forward.w2.weight"]
        out[p + "attention_norm.weight"] = sd[p + "attention_norm.weight"]
        out[p + "ffn_norm.weight"] = sd[p + "ffn_norm.weight"]
    return out


def _meta_params(config: ModelConfig) -> dict:
    params = {"dim": config.dim, "n_layers": config.n_layers, "n_heads": config.n_heads,
              "norm_eps": config.norm_eps, "rope_theta": config.rope_theta, "vocab_size": config.vocab_size,
              "max_seq_len": config.max_seq_len}
    if config.n_kv_heads != config.n_heads:
        params["n_kv_heads"] = config.n_kv_heads
    if config.ffn_hidden_dim is None:
        params["multiple_of"] = config.multiple_of
        if config.ffn_dim_multiplier is not None:
            params["ffn_dim_multiplier"] = config.ffn_dim_multiplier
    else:
        params["codelm_ffn_hidden_dim"] = config.ffn_hidden_dim
    return params


def save_meta(model: Transformer, directory, num_shards: int = 1, tokenizer=None) -> Path:
    """Write Meta's layout split into `num_shards` model-parallel shards (as Meta ships 13B in 2, 34B in 4)."""
    sd = to_meta_state_dict(model)
    c = model.config
    for name, dim in _meta_layout(c.n_layers):
        if dim is not None and sd[name].shape[dim] % num_shards:
            raise CheckpointError(f"cannot split '{name}' {list(sd[name].shape)} into {num_shards} shards")
    with _AtomicDir(directory) as tmp:
        for r in range(num_shards):
            shard = {}
            for name, dim in _meta_layout(c.n_layers):
                t = sd[name]
                shard[name] = (t.chunk(num_shards, dim=dim)[r] if dim is not None else t).clone()
            torch.save(shard, tmp / f"consolidated.{r:02d}.pth")
        (tmp / "params.json").write_text(json.dumps(_meta_params(c), indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)
    return Path(directory)


# ----------------------------------------------------------------- reading
def detect_layout(path) -> str:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint directory")
    if not p.is_dir():
        raise CheckpointError(f"{p}: a checkpoint is a directory (HF: config.json + *.safetensors; "
                              "Meta: params.json + consolidated.NN.pth)")
    if (p / "config.json").exists():
        return "hf"
    if (p / "params.json").exists():
        return "meta"
    raise CheckpointError(f"{p}: neither config.json (Hugging Face layout) nor params.json (Meta layout) found")


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def read_config(path) -> ModelConfig:
    """The config of an HF or Meta checkpoint directory. HF: config.json alone, no weights read.
    Meta: params.json often leaves the vocabulary to the tokenizer, so the shards are opened for
    the shapes."""
    p = Path(path)
    if detect_layout(p) == "hf":
        return config_from_hf(_read_json(p / "config.json"), str(p / "config.json"))
    return load_checkpoint(p)[1]


def load_hf(path, dtype=None, device="cpu") -> tuple[Transformer, ModelConfig]:
    p = Path(path)
    config = config_from_hf(_read_json(p / "config.json"), str(p / "config.json"))
    index = p / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(_read_json(index).get("weight_map", {}).values()))
    elif (p / "model.safetensors").exists():
        files = ["model.safetensors"]
    elif list(p.glob("pytorch_model*.bin")):
        files = sorted(f.name for f in p.glob("pytorch_model*.bin"))
    else:
        raise CheckpointError(f"{p}: no weights (model.safetensors, its sharded index, or pytorch_model.bin)")
    hf = {}
    for f in files:
        fp = p / f
        if not fp.exists():
            raise CheckpointError(f"{fp}: shard named in the index is missing")
        try:
            if f.endswith(".safetensors"):
                hf.update(load_file(str(fp)))
            else:
                hf.update(torch.load(fp, map_location="cpu", weights_only=True, mmap=True))
        except (SafetensorError, RuntimeError, OSError, Exception) as e:
            raise CheckpointError(f"{fp}: cannot read weights ({type(e).__name__}: {str(e)[:200]})") from None
    sd = from_hf_state_dict(hf, config, str(p))
    return build_model(config, sd, str(p), dtype=dtype, device=device), config


def load_meta(path, dtype=None, device="cpu") -> tuple[Transformer, ModelConfig]:
    p = Path(path)
    params = _read_json(p / "params.json")
    shard_files = sorted(p.glob("consolidated.*.pth"))
    if not shard_files:
        raise CheckpointError(f"{p}: params.json found but no consolidated.NN.pth shards")
    shards = []
    for f in shard_files:
        try:
            shards.append(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
        except Exception as e:
            raise CheckpointError(f"{f}: cannot read shard ({type(e).__name__}: {str(e)[:200]})") from None
    n_layers = params.get("n_layers")
    if n_layers is None:
        raise CheckpointError(f"{p / 'params.json'}: required field 'n_layers' is missing")
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers <= 0:
        raise CheckpointError(f"{p / 'params.json'}: field 'n_layers' must be a positive integer, got {n_layers!r}")
    merged = {}
    for name, dim in _meta_layout(n_layers):
        parts = []
        for f, s in zip(shard_files, shards):
            if name not in s:
                raise CheckpointError(f"{f}: tensor '{name}' is missing (params.json says {n_layers} layers)")
            parts.append(s[name])
        merged[name] = torch.cat(parts, dim=dim) if dim is not None and len(parts) > 1 else parts[0]
    for key in ("dim", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "max_seq_len", "codelm_ffn_hidden_dim",
                "norm_eps", "rope_theta", "ffn_dim_multiplier"):
        v = params.get(key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise CheckpointError(f"{p / 'params.json'}: field '{key}' must be a number, got {json.dumps(v)}")
    vocab = params.get("vocab_size", -1)
    if vocab is None or vocab <= 0:  # Meta's params.json leaves vocab to the tokenizer
        vocab = merged["tok_embeddings.weight"].shape[0]
    known = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
             "norm_eps", "rope_theta", "max_seq_len", "codelm_ffn_hidden_dim", "max_batch_size", "use_scaled_rope"}
    unknown = set(params) - known
    if unknown:
        raise CheckpointError(f"{p / 'params.json'}: unknown field(s) {sorted(unknown)}")
    try:
        config = ModelConfig(
            dim=params["dim"], n_layers=n_layers, n_heads=params["n_heads"], n_kv_heads=params.get("n_kv_heads"),
            vocab_size=vocab, multiple_of=params.get("multiple_of", 256),
            ffn_dim_multiplier=params.get("ffn_dim_multiplier"), ffn_hidden_dim=params.get("codelm_ffn_hidden_dim"),
            norm_eps=params.get("norm_eps", 1e-5), rope_theta=float(params.get("rope_theta", 10000.0)),
            max_seq_len=params.get("max_seq_len", 16384 if params.get("rope_theta", 1e4) > 1e4 else 4096),
        )
    except KeyError as e:
        raise CheckpointError(f"{p / 'params.json'}: required field {e} is missing") from None
    except Exception as e:
        raise CheckpointError(f"{p / 'params.json'}: {e}") from None
    sd = {"tok_embeddings.weight": merged["tok_embeddings.weight"], "norm.weight": merged["norm.weight"],
          "output.weight": merged["output.weight"]}
    for i in range(n_layers):
        q = f"layers.{i}."
        wq, wk = merged[q + "attention.wq.weight"], merged[q + "attention.wk.weight"]
        for name, t, heads in (("wq", wq, config.n_heads), ("wk", wk, config.n_kv_heads)):
            if tuple(t.shape) != (heads * config.head_dim, config.dim):
                raise CheckpointError(f"{p}: tensor 'layers.{i}.attention.{name}.weight' has shape {list(t.shape)} "
                                      f"but params.json implies {[heads * config.head_dim, config.dim]}")
        wq, wk = _permute_from_meta(wq, config.n_heads), _permute_from_meta(wk, config.n_kv_heads)
        sd[q + "attention.wqkv.weight"] = torch.cat([wq, wk, merged[q + "attention.wv.weight"]], dim=0)
        sd[q + "attention.wo.weight"] = merged[q + "attention.wo.weight"]
        sd[q + "feed_forward.w13.weight"] = torch.cat(
            [merged[q + "feed_forward.w1.weight"], merged[q + "feed_forward.w3.weight"]], dim=0)
        sd[q + "feed_forward.w2.weight"] = merged[q + "feed_forward.w2.weight"]
        sd[q + "attention_norm.weight"] = merged[q + "attention_norm.weight"]
        sd[q + "ffn_norm.weight"] = merged[q + "ffn_norm.weight"]
    return build_model(config, sd, str(p), dtype=dtype, device=device), config


def load_checkpoint(path, dtype=None, device="cpu") -> tuple[Transformer, ModelConfig]:
    """Open an HF or Meta checkpoint directory; returns (model in eval mode, config)."""
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    layout = detect_layout(path)
    return (load_hf if layout == "hf" else load_meta)(path, dtype=dtype, device=device)


def find_tokenizer_path(path) -> Path | None:
    """Meta's downloads keep tokenizer.model beside the shards or one folder up."""
    p = Path(path)
    for d in (p, p.parent):
        for name in ("tokenizer.json", "tokenizer.model"):
            if (d / name).exists():
                return d
    return None


@dataclass
class Loaded:
    model: Transformer
    tokenizer: object | None
    config: ModelConfig
    path: Path


def load(path, dtype=None, device="cpu", tokenizer: bool = True) -> Loaded:
    """`codelm.load(path)`: model (eval mode) and tokenizer from an HF or Meta checkpoint directory."""
    model, config = load_checkpoint(path, dtype=dtype, device=device)
    tok = None
    if tokenizer:
        tdir = find_tokenizer_path(path)
        if tdir is not None:
            tok = Tokenizer.load(tdir)
            if tok.vocab_size > config.vocab_size:
                raise CheckpointError(f"{tdir}: tokenizer has {tok.vocab_size} tokens but the model's "
                                      f"vocabulary is {config.vocab_size}")
    return Loaded(model=model, tokenizer=tok, config=config, path=Path(path))


def convert_main(src, dst, dtype=None, max_shard_size="5GB", force: bool = False) -> int:
    claim_output(dst, "checkpoint", folder=True, force=force, inputs=[src], what="converted checkpoint")
    _parse_size(max_shard_size)
    loaded = load(src, tokenizer=True)
    save_hf(loaded.model, dst, tokenizer=loaded.tokenizer, dtype=dtype, max_shard_size=max_shard_size)
    files = sorted(f.name for f in Path(dst).iterdir() if not f.name.startswith("."))
    print(f"converted {src} ({detect_layout(src)} layout, {loaded.model.num_params() / 1e6:.1f}M parameters) "
          f"-> {dst} (HF layout): {', '.join(files)}")
    return 0

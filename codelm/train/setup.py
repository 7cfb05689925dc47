"""What a run trains, from its recipe: tokenizer, token files, model, optimizer.

1. tokenizer: the one the recipe names (or the init checkpoint's), or a byte-level
   BPE trained on the training data (kept in RUN/tokenizer, reused);
2. data: each source tokenized once into RUN/data/NAME.{train,valid}.bin (FIM on
   the training split, plain text for validation, so validation losses compare
   across FIM rates); rebuilt only when the corpus, tokenizer or settings change;
3. model: a preset with fresh weights (seeded), or a checkpoint to continue from,
   placed on this process's device (or sharded across processes);
4. optimizer: AdamW.

Rank 0 writes what is shared (tokenizer, token files) while the others wait.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.utils.checkpoint

from codelm.data.corpus import corpus_texts
from codelm.data.fim import FimSettings
from codelm.data.instruct import InstructFile, build_instruct_file
from codelm.data.packing import TokenFile, build_token_file
from codelm.errors import CheckpointError, ConfigError, DataError
from codelm.model.checkpoint import find_tokenizer_path, load_checkpoint, read_config
from codelm.model.config import ModelConfig
from codelm.model.llama import Transformer
from codelm.tokenizer import Tokenizer, train_tokenizer
from codelm.train import distributed as D
from codelm.train.recipe import Recipe, TrainSection, source_name

# The shape of a model: a checkpoint that differs in any of these is another architecture.
ARCH_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim")


# ----------------------------------------------------------------- tokenizer
def resolve_tokenizer(recipe: Recipe, run_dir: Path, info: D.DistInfo, show_progress: bool) -> Tokenizer:
    t = recipe.tokenizer
    if t.path is not None:
        return Tokenizer.load(t.path)
    if t.vocab_size is None:
        found = find_tokenizer_path(recipe.model.init_from)
        if found is None:
            raise ConfigError(f"{recipe.path}: model.init_from {recipe.model.init_from} has no tokenizer "
                              "beside it; set tokenizer.path")
        return Tokenizer.load(found)
    tok_dir = run_dir / "tokenizer"
    stamp = tok_dir / "codelm_training.json"
    want = {"vocab_size": t.vocab_size, "train_bytes": t.train_bytes, "min_frequency": t.min_frequency,
            "sources": [_source_fingerprint(s.path, "train") for s in recipe.data.sources]}
    if info.is_main:
        have = json.loads(stamp.read_text()) if stamp.exists() else None
        if have != want:
            texts = _tokenizer_training_texts(recipe, t.train_bytes)
            if show_progress:
                print(f"train: training a {t.vocab_size}-token BPE on {sum(map(len, texts)) / 1e6:.1f} MB of text")
            tok = train_tokenizer(texts, t.vocab_size, min_frequency=t.min_frequency, show_progress=show_progress)
            tmp = run_dir / ".tokenizer.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tok.save(tmp)
            (tmp / stamp.name).write_text(json.dumps(want, indent=1))
            shutil.rmtree(tok_dir, ignore_errors=True)
            os.replace(tmp, tok_dir)  # a folder swap (files.py writes files): the whole tokenizer or none
    D.barrier(info)
    return Tokenizer.load(tok_dir)


def _tokenizer_training_texts(recipe: Recipe, max_bytes: int) -> list[str]:
    """Training-split texts of every source, each source contributing in proportion to its weight."""
    total_w = sum(s.weight for s in recipe.data.sources)
    texts: list[str] = []
    for s in recipe.data.sources:
        budget = int(max_bytes * s.weight / total_w)
        used = 0
        for text in corpus_texts(s.path, "train"):
            if used >= budget:
                break
            texts.append(text[: budget - used])
            used += len(texts[-1])
    if not texts:
        raise DataError(f"{recipe.path}: the data sources hold no text to train a tokenizer on")
    return texts


# ---------------------------------------------------------------------- data
def _split_file(path: str, split: str) -> Path | None:
    p = Path(path)
    if p.is_dir():
        f = p / f"{split}.jsonl"
        return f if f.is_file() else None
    if p.is_file():
        return p if split == "train" else None
    raise DataError(f"data source {path} does not exist (a corpus folder from `codelm corpus`, or a JSONL file)")


def _source_fingerprint(path: str, split: str) -> dict | None:
    f = _split_file(path, split)
    if f is None:
        return None
    st = f.stat()
    return {"file": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def prepare_data(recipe: Recipe, run_dir: Path, tokenizer, info: D.DistInfo, show_progress: bool):
    """Token files for every source: (train TokenFiles in recipe order, {name: valid TokenFile})."""
    d = recipe.data
    fim = FimSettings(d.fim_rate, d.fim_spm_rate, recipe.run.seed) if d.fim_rate > 0 else None
    data_dir = run_dir / "data"
    plan = []
    for s in d.sources:
        name = source_name(s)
        for split in ("train", "valid"):
            src = _split_file(s.path, split)
            if src is None:
                if split == "train":
                    raise DataError(f"data source {s.path}: no training data")
                continue
            plan.append((name, split, src, data_dir / f"{name}.{split}.bin"))
    kinds = {source_name(s): s.kind for s in d.sources}
    if info.is_main:
        for name, split, src, out in plan:
            if kinds[name] == "instruct":  # dialogs: whole per row, loss on assistant tokens only
                build_instruct_file(src, tokenizer, out, d.seq_len,
                                    settings={"source": _source_fingerprint(str(src), "train")})
                continue
            build_token_file(corpus_texts(src), tokenizer, out, d.seq_len,
                             fim=fim if split == "train" else None,
                             max_document_chars=d.max_document_chars,
                             settings={"source": _source_fingerprint(str(src), "train")},
                             show_progress=show_progress, desc=f"tokenize {name}/{split}")
    D.barrier(info)
    opener = {"text": TokenFile, "instruct": InstructFile}
    train = [opener[kinds[name]](out) for name, split, _, out in plan if split == "train"]
    valid = {name: opener[kinds[name]](out) for name, split, _, out in plan if split == "valid"}
    for f in train:
        if f.n_sequences == 0:
            raise DataError(f"{f.path}: the training data of this source is shorter than one sequence of "
                            f"{d.seq_len} tokens; add data or lower data.seq_len")
    return train, {k: v for k, v in valid.items() if v.n_sequences > 0}


# --------------------------------------------------------------------- model
def _arch(config) -> dict:
    return {f: getattr(config, f) for f in ARCH_FIELDS}


def _arch_text(config) -> str:
    return ", ".join(f"{k}={v}" for k, v in _arch(config).items())


def model_config_for(recipe: Recipe, tokenizer):
    """The config of a fresh model (preset); None when the run continues from model.init_from."""
    m = recipe.model
    if m.preset is not None:
        base = ModelConfig.from_preset(m.preset)
        overrides = {"vocab_size": tokenizer.vocab_size, "max_seq_len": max(base.max_seq_len, recipe.data.seq_len),
                     "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id}
        overrides.update(m.config)
        config = ModelConfig.from_preset(m.preset, **overrides)
        if config.vocab_size < tokenizer.vocab_size:
            raise ConfigError(f"{recipe.path}: model.config.vocab_size={config.vocab_size} is smaller than the "
                              f"tokenizer's {tokenizer.vocab_size} tokens")
        return config
    return None


def init_from_config(recipe: Recipe, tokenizer):
    """Architecture a run continuing from model.init_from has (for checking a resume checkpoint)."""
    config = read_config(recipe.model.init_from)
    if recipe.model.extend_vocab and tokenizer.vocab_size > config.vocab_size:
        config.vocab_size = tokenizer.vocab_size
    return config


def _check_vocab(config, tokenizer, recipe: Recipe, source: str) -> None:
    if tokenizer.vocab_size > config.vocab_size and not recipe.model.extend_vocab:
        raise CheckpointError(f"{source}: the model has {config.vocab_size} embeddings but the tokenizer "
                              f"{tokenizer.vocab_size} tokens; set model.extend_vocab = true to add rows "
                              "(as Code Llama did to Llama 2 for its infilling tokens)")


def extend_vocab(model, new_size: int) -> None:
    """Grow embeddings and output to new_size rows; new rows start at the mean of the old ones."""
    old = model.config.vocab_size
    if new_size <= old:
        return
    with torch.no_grad():
        for name in ("tok_embeddings", "output"):
            w = getattr(model, name).weight
            extra = w.mean(dim=0, keepdim=True).expand(new_size - old, -1)
            bigger = torch.cat([w, extra], dim=0)
            if name == "tok_embeddings":
                layer = torch.nn.Embedding(new_size, w.shape[1], device=w.device, dtype=w.dtype)
            else:
                layer = torch.nn.Linear(w.shape[1], new_size, bias=False, device=w.device, dtype=w.dtype)
            layer.weight.copy_(bigger)
            setattr(model, name, layer)
    model.config.vocab_size = new_size


def starting_model(recipe: Recipe, tokenizer, resume_from: Path | None, expected_config):
    """The model a run starts from, whole, on CPU in fp32, in train mode: (model, config).
    A checkpoint of this run (resume_from) if given, else model.init_from, else fresh preset weights.
    (codelm.model.checkpoint.build_model makes a model of given weights; this chooses the weights.)"""
    m = recipe.model
    if resume_from is not None:
        model, config = load_checkpoint(resume_from, dtype=torch.float32)
        if expected_config is not None and _arch(config) != _arch(expected_config):
            raise CheckpointError(
                f"{resume_from}: checkpoint architecture ({_arch_text(config)}) differs from the recipe's "
                f"({_arch_text(expected_config)}); resume with the recipe that made it, or use another run.out_dir")
        return model.train(), config
    if m.init_from is not None:
        model, config = load_checkpoint(m.init_from, dtype=torch.float32)
        _check_vocab(config, tokenizer, recipe, m.init_from)
        if m.config:
            for k, v in m.config.items():   # rope_theta / rope_scaling / max_seq_len (LCFT), norm_eps
                setattr(config, k, v)
            model.reset_rope()
        if config.max_seq_len < recipe.data.seq_len:
            config.max_seq_len = recipe.data.seq_len
            model.reset_rope()
        extend_vocab(model, tokenizer.vocab_size)
        return model.train(), config
    torch.manual_seed(recipe.run.seed)
    model = Transformer(expected_config)
    return model.train(), expected_config


def place_model(model, config, t: TrainSection, info: D.DistInfo):
    """The model on this process's device, or sharded across the processes (from rank 0's weights);
    then activation checkpointing and torch.compile as the recipe asks."""
    if info.enabled:
        model = _shard_from_rank0(model, config, info)
    else:
        model = model.to(info.device)
    if t.activation_checkpointing:
        _enable_activation_checkpointing(model)
    if t.compile:
        model.compile()
    return model


def _shard_from_rank0(model, config, info: D.DistInfo):
    """Shard the model; rank 0's weights are broadcast into every process's shards.
    The other ranks pass None and start from an empty (meta device) model."""
    # late: torch.distributed.checkpoint takes ~2 s to import
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full = {k: v.detach().clone() for k, v in model.state_dict().items()} if info.is_main else {}
    if not info.is_main:
        with torch.device("meta"):
            model = Transformer(config)
    D.shard_model(model, info)
    model.to_empty(device=info.device)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    model.reset_rope()
    return model.train()


def _enable_activation_checkpointing(model) -> None:
    """Recompute each block's activations in backward (memory for time); state-dict names stay the same."""
    for block in model.layers:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return torch.utils.checkpoint.checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


# ----------------------------------------------------------------- optimizer
def make_optimizer(model, t) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices and embeddings, not on norm gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel (CPU and GPU) is one pass over each tensor; the default takes ~10 elementwise passes.
    fused = all(not hasattr(p, "device_mesh") for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, fused=fused or None)

"""`codelm lab length`: train short, test long, on this machine, with numbers and plots.

A tiny Llama is trained at a short length L on the Python standard library, then compared:

  rope             RoPE, θ = 1e4, as trained
  rope-1e6-infer   the same weights with θ raised to 1e6 at inference only
  lcft-1e4         long-context fine-tuning at 4L keeping θ = 1e4
  pi-ft            position interpolation (positions / 4) + the same fine-tune
  lcft-1e6         long-context fine-tuning at 4L with θ = 1e6 (Code Llama's LCFT)
  alibi            ALiBi (no rotary embedding) trained at L from scratch

(4L as in the paper's Table 18, 4k -> 16k; `--lcft-factor` changes it.) Each is measured by perplexity
at L/4 .. 16L on long held-out files, key retrieval (the paper's `my_function` task) by length and
relative key position with a 95% interval per cell (codelm/lab/stats.py), a position sweep, and loss by
position inside a 16L window; over several seeds. Outputs in OUT: results.json, table.md, README.md (what
the curves show and why, and which of Table 18's statements hold), ppl_by_length.png, key_retrieval.png,
loss_by_position.png, rope_decay.png.

A tiny model does not learn to retrieve a value from minutes of standard-library code, so a
share of its training rows are retrieval drills: the evaluation's task on training code (random
value, random key-to-question distance), each at most L tokens, trained on the answer only with
a loss weight that makes a drill's few answer tokens count like a row of code. The skill exists
inside the trained window; the lab asks whether it survives at distances never trained. The
fine-tunes follow the paper's shape: a learning rate 15x below the pretraining peak and 5% of the
pretraining tokens (recipes/lcft-lab.toml), and mostly drills as long as their rows
(`lcft_drill_weight`): a new θ breaks what the base learned to read, and the drills teach it again.
Settings are chosen on one half of the held-out files (`eval_split="select"`) and reported on the
other.

Training goes through the ordinary recipes (recipes/lab-length.toml for the pretraining at L,
recipes/lcft-lab.toml for the fine-tunes), so a larger lab is `--set` overrides away. Every stage
is resumable: run the same command again and finished runs and evaluations are reused.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from codelm.data.corpus import (STDLIB_TEST_EXCLUDE, CorpusOptions, corpus_texts, detect_language, list_files,
                                quality_problem, read_corpus, resolve_sources, split_of)
from codelm.errors import ConfigError, DataError
from codelm.evaluate import longctx as lc
from codelm.files import atomic_write, claim_output, mark_output, write_json
from codelm.lab.drills import write_drills
from codelm.lab.length_config import LabLengthConfig
from codelm.lab.report import compute_seconds, explanation, plot_all, summarize, table_markdown
from codelm.model.checkpoint import load_checkpoint
from codelm.tokenizer import Tokenizer, train_tokenizer
from codelm.train.recipe import build_recipe, read_raw_recipe
from codelm.train.runs import train_once

PRETRAIN_RECIPE = "lab-length.toml"
LCFT_RECIPE = "lcft-lab.toml"


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    base: str                          # the pretrained run it starts from: "rope" or "alibi"
    lcft: dict | None = None           # model.config of the long-context fine-tune (None: no fine-tune)
    inference: dict | None = None      # config changed at inference only


def methods(factor: int) -> list[Method]:
    return [
        Method("rope", "RoPE θ=1e4", "rope"),
        Method("rope-1e6-infer", "θ→1e6 at inference only", "rope", inference={"rope_theta": 1e6}),
        Method("lcft-1e4", f"LCFT at {factor}L, θ=1e4", "rope", lcft={"rope_theta": 1e4}),
        Method("pi-ft", f"PI ×{factor} + fine-tune", "rope",
               lcft={"rope_scaling": {"type": "linear", "factor": float(factor)}}),
        Method("lcft-1e6", f"LCFT at {factor}L, θ=1e6", "rope", lcft={"rope_theta": 1e6}),
        Method("alibi", "ALiBi trained at L", "alibi"),
    ]


@dataclass
class LabSettings:
    out: Path
    seeds: int = 3
    quick: bool = False
    overrides: list[str] = field(default_factory=list)       # --set for the pretraining recipe
    lcft_overrides: list[str] = field(default_factory=list)  # --lcft-set for the fine-tunes
    lcft_factor: int = 4              # fine-tune length = factor x L (4, as in the paper's Table 18)
    train_chars: int = 3_000_000      # training text kept from the corpus (the runs read a fraction)
    drill_weight: float = 0.5         # share of pretraining sequences drawn from retrieval drills
    drill_loss_weight: float = 40.0   # each drill answer token counts this many code tokens in the loss
    # Drills in the fine-tunes: most of their rows, as long as the rows (keys up to the fine-tune length away),
    # their code trained too, the answer weighing about as much as a 512-token row of code. A new θ breaks the
    # retrieval the base learned, even at L; the drills teach it again (0.5: 26% at L, 0.9: 57%; attempts.md).
    lcft_drill_weight: float = 0.9
    lcft_drill_loss_weight: float = 200.0
    eval_tokens: int = 16_384         # held-out tokens scored at every length
    retrieval_examples: int = 64      # per (length, key position) cell and seed
    sweep_multiple: int = 4           # the position sweep runs at sweep_multiple x L
    eval_split: str = "report"        # which half of the held-out files: "report" (the tables) or "select"
    max_length_multiple: int = 16     # perplexity up to this multiple of L
    retrieval_max_multiple: int = 8   # key retrieval up to this multiple of L (2x the fine-tune length)
    methods: list[str] | None = None  # which methods to run (default: all six)
    retrieval: bool = True            # key retrieval and the position sweep (off: perplexity only)
    corpus: Path | None = None        # an existing corpus folder (train.jsonl, valid.jsonl) instead of building one
    corpus_sources: list[str] | None = None   # default: the standard library (tests left out)
    show_progress: bool = True
    threads: int | None = None        # torch threads for every run and evaluation (default: one per core)
    only_seed: int | None = None      # train and evaluate this seed only (no tables): one process per seed


# ------------------------------------------------------------------ helpers
def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _recipe(raw: dict, overrides: list[str], changes: dict, where: str, threads: int | None = None):
    """A Recipe from a raw TOML table: the user's --set first, then the lab's own settings."""
    return build_recipe(raw, where, overrides, dict(changes, **{"train.threads": threads} if threads else {}),
                        fit_batch=True)


# ------------------------------------------------------------------- corpus
def prepare_corpus(s: LabSettings) -> Path:
    """OUT/corpus: the Python files of the standard library (or the given folders), tests left out, through
    codelm corpus's quality filters, 10% of the files held out by a hash of their path. No deduplication or
    benchmark decontamination (`codelm corpus` does those): the lab evaluates on its own held-out files only."""
    corpus = s.out / "corpus"
    if (corpus / "train.jsonl").is_file() and (corpus / "valid.jsonl").is_file():
        return corpus
    opts = CorpusOptions(languages=["python"], exclude=STDLIB_TEST_EXCLUDE, valid_fraction=0.1)
    rows: dict[str, list[str]] = {"train": [], "valid": []}
    for src in resolve_sources(s.corpus_sources, s.out):
        for path, file in list_files(src, opts.exclude):
            if not path.endswith(".py"):
                continue
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if detect_language(file, text[:200]) != "python" or quality_problem(text, opts):
                continue
            rows[split_of(path, opts.seed, opts.valid_fraction)].append(json.dumps({"path": path, "text": text}) + "\n")
    if not rows["train"] or not rows["valid"]:
        raise DataError(f"lab: too few Python files in {s.corpus_sources or 'the standard library'} "
                        f"({len(rows['train'])} training, {len(rows['valid'])} held out)")
    corpus.mkdir(parents=True, exist_ok=True)
    for split in ("valid", "train"):
        atomic_write(corpus / f"{split}.jsonl", "".join(rows[split]))
    return corpus


def trimmed_training_text(corpus: Path, dest: Path, max_chars: int) -> Path:
    """dest/train.jsonl: the corpus's training files until max_chars (so each run tokenizes little);
    dest/valid.jsonl: its held-out files."""
    if (dest / "train.jsonl").is_file() and (dest / "valid.jsonl").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for split, limit in (("train", max_chars), ("valid", None)):
        rows, used = [], 0
        for rec in read_corpus(corpus, split):
            if limit is not None and used >= limit:
                break
            rows.append(json.dumps({"text": rec["text"]}) + "\n")
            used += len(rec["text"])
        atomic_write(dest / f"{split}.jsonl", "".join(rows))
    return dest


def prepare_tokenizer(s: LabSettings, code_dir: Path, vocab_size: int):
    tdir = s.out / "tokenizer"
    if (tdir / "tokenizer.json").is_file():
        tok = Tokenizer.load(tdir)
        if tok.vocab_size == vocab_size:
            return tok, tdir
    tok = train_tokenizer(list(corpus_texts(code_dir, "train")), vocab_size, show_progress=False)
    tmp = s.out / ".tokenizer.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save(tmp)
    shutil.rmtree(tdir, ignore_errors=True)
    os.replace(tmp, tdir)
    return Tokenizer.load(tdir), tdir


@dataclass
class Plan:
    """Everything the lab's runs and evaluations depend on, fixed once per lab."""
    seq_len: int
    pretrain_raw: dict
    lcft_raw: dict
    code_dir: Path
    drills: Path | None       # drills of at most L tokens, for the pretraining
    lcft_drills: Path | None  # drills of at most the fine-tune length
    tokenizer_dir: Path
    pretrain_tokens: int = 0
    lcft_tokens: int = 0


def _sources(plan: Plan, drills: Path | None, share: float, answer_weight: float, code_weight: float) -> list[dict]:
    """Training code, and retrieval drills (share of the rows): the answer weighted answer_weight, the
    drill's own code code_weight (0: answer only)."""
    code = {"path": str(plan.code_dir), "name": "code", "weight": 1.0 - share}
    if drills is None or share == 0:
        return [dict(code, weight=1.0)]
    return [code, {"path": str(drills), "name": "drills", "weight": share, "kind": "instruct",
                   "loss_weight": answer_weight, "prompt_loss_weight": code_weight}]


def pretrain_recipe(s: LabSettings, plan: Plan, seed: int, kind: str):
    changes = {
        "run.name": f"{kind}-seed{seed}", "run.out_dir": str(s.out / "runs" / f"seed{seed}" / kind), "run.seed": seed,
        "tokenizer.path": str(plan.tokenizer_dir), "tokenizer.vocab_size": None,
        "data.sources": _sources(plan, plan.drills, s.drill_weight, s.drill_loss_weight, 0.0), "data.fim_rate": 0.0,
        # Dotted, so that the user's --set model.config.X survives.
        "model.config.max_seq_len": plan.seq_len, "model.config.position_encoding": kind,
    }
    return _recipe(plan.pretrain_raw, s.overrides, changes, f"{PRETRAIN_RECIPE} ({kind}, seed {seed})", s.threads)


def lcft_recipe(s: LabSettings, plan: Plan, seed: int, m: Method, base_final: Path):
    long_len = s.lcft_factor * plan.seq_len
    changes = {
        "run.name": f"{m.name}-seed{seed}", "run.out_dir": str(s.out / "runs" / f"seed{seed}" / m.name),
        "run.seed": seed, "model.init_from": str(base_final), "model.preset": None,
        "model.config": {"max_seq_len": long_len, **m.lcft},
        "tokenizer.path": str(plan.tokenizer_dir), "tokenizer.vocab_size": None,
        "data.sources": _sources(plan, plan.lcft_drills, s.lcft_drill_weight, s.lcft_drill_loss_weight, 1.0),
        "data.seq_len": long_len,
        "data.fim_rate": 0.0,
    }
    return _recipe(plan.lcft_raw, s.lcft_overrides, changes, f"{LCFT_RECIPE} ({m.name}, seed {seed})", s.threads)


# --------------------------------------------------------------- evaluation
@dataclass
class EvalData:
    docs: list
    filler: np.ndarray
    ppl_lengths: list[int]
    kr_lengths: list[int]
    sweep_length: int
    window: int


def held_out_half(texts: list[str], split: str) -> list[str]:
    """The held-out files of one half: "report" (the tables) or "select" (for choosing settings), alternating
    in file order so that both halves see every part of the corpus."""
    if split not in ("report", "select"):
        raise ConfigError(f"lab: eval split must be report or select, got {split!r}")
    return texts[0::2] if split == "report" else texts[1::2]


def eval_data(s: LabSettings, plan: Plan, tokenizer) -> EvalData:
    L = plan.seq_len
    top = s.max_length_multiple * L
    texts = held_out_half(lc.held_out_texts(plan.code_dir, "valid"), s.eval_split)
    docs = lc.long_documents(texts, tokenizer, min_tokens=top + 1, max_tokens_each=top + 1,
                             total_tokens=s.eval_tokens)
    mults = [m for m in (1, 2, 4, 8, 16, 32, 64) if m <= s.max_length_multiple]
    return EvalData(docs=docs, filler=lc.code_token_stream(texts, tokenizer),
                    ppl_lengths=[L // 4, L // 2] + [m * L for m in mults],
                    kr_lengths=[m * L for m in mults if m <= s.retrieval_max_multiple],
                    sweep_length=s.sweep_multiple * L, window=top)


def evaluate_model(model, tokenizer, data: EvalData, s: LabSettings, seed: int, desc: str) -> dict:
    ppl = lc.perplexity_by_length(model, data.docs, data.ppl_lengths, progress=s.show_progress,
                                  desc=f"{desc}: perplexity")
    pos = lc.loss_by_position(model, data.docs, data.window)
    out = {"perplexity": {str(k): v for k, v in ppl.items()}, "loss_by_position": pos}
    if not s.retrieval:
        return out
    grid = lc.retrieval_grid(model, tokenizer, data.filler, data.kr_lengths, list(lc.PAPER_POSITIONS),
                             s.retrieval_examples, seed=1000 + seed, progress=s.show_progress,
                             desc=f"{desc}: key retrieval")
    sweep = lc.retrieval_grid(model, tokenizer, data.filler, [data.sweep_length], list(lc.SWEEP_POSITIONS),
                              s.retrieval_examples, seed=2000 + seed, progress=s.show_progress,
                              desc=f"{desc}: position sweep")
    return dict(out, key_retrieval=grid, sweep=sweep)


def _load_model(path: Path, inference: dict | None):
    model, config = load_checkpoint(path, dtype=torch.float32)
    for k, v in (inference or {}).items():
        setattr(model.config, k, v)
    if inference:
        model.reset_rope()
    return model.eval()


# ------------------------------------------------------------------ the lab
def _drills_needed(share: float, train, row_len: int) -> int:
    """About 1.5 drills per drill row of a run (a drill fills half a row on average): enough that few repeat."""
    return int(1.5 * share * train.max_steps * train.batch_tokens / max(row_len // 2, 1))


def _eval_keys(s: LabSettings, pre_raw: dict, lcft_raw: dict) -> dict[bool, str]:
    """What a cached evaluation depends on, for models without (False) and with (True) a fine-tune: a model
    that was not fine-tuned keeps its evaluation when only the fine-tune settings change."""
    settings = {k: v for k, v in asdict(s).items() if k not in ("out", "show_progress", "seeds", "methods", "threads",
                                                                     "only_seed")}
    return {False: _fingerprint({"settings": {k: v for k, v in settings.items() if not k.startswith("lcft_")},
                                 "recipes": [pre_raw]}),
            True: _fingerprint({"settings": settings, "recipes": [pre_raw, lcft_raw]})}


def run_lab(s: LabSettings) -> dict:
    """Train, fine-tune and evaluate every method for every seed; write the table, plots and notes."""
    if s.seeds < 1:
        raise ConfigError(f"lab: --seeds must be at least 1, got {s.seeds}")
    if s.only_seed is not None and not 0 <= s.only_seed < s.seeds:
        raise ConfigError(f"lab: --only-seed must be between 0 and {s.seeds - 1} (--seeds {s.seeds}), got {s.only_seed}")
    held_out_half([], s.eval_split)
    if s.lcft_factor < 2:
        raise ConfigError(f"lab: the fine-tune length factor must be at least 2, got {s.lcft_factor}")
    for name in ("drill_weight", "lcft_drill_weight"):
        if not 0.0 <= getattr(s, name) < 1.0:
            raise ConfigError(f"lab: {name.replace('_', ' ')} must be in [0, 1), got {getattr(s, name)}")
    for name in ("drill_loss_weight", "lcft_drill_loss_weight"):
        if not getattr(s, name) > 0:
            raise ConfigError(f"lab: {name.replace('_', ' ')} must be positive, got {getattr(s, name)}")
    t_start = time.time()
    s.out = Path(s.out)
    s.out.mkdir(parents=True, exist_ok=True)
    mark_output(s.out, "lab-length")
    torch.set_num_threads(s.threads or max(1, os.cpu_count() or 1))
    timings: dict[str, float] = {}

    pre_raw, _ = read_raw_recipe(PRETRAIN_RECIPE)
    lcft_raw, _ = read_raw_recipe(LCFT_RECIPE)
    if s.quick:
        pre_raw, lcft_raw = quick_recipes(pre_raw, lcft_raw)
    probe = _recipe(pre_raw, s.overrides, {"tokenizer.path": None}, PRETRAIN_RECIPE)
    L = probe.data.seq_len
    if L % 4:
        raise ConfigError(f"lab: data.seq_len={L} must be a multiple of 4 (perplexity is measured at L/4)")

    t0 = time.time()
    say = print if s.show_progress else (lambda *a, **k: None)
    say(f"lab length: 1/4 corpus, tokenizer and retrieval drills in {s.out}")
    corpus = Path(s.corpus) if s.corpus else prepare_corpus(s)
    for split in ("train", "valid"):
        if not (corpus / f"{split}.jsonl").is_file():
            raise DataError(f"lab: {corpus / (split + '.jsonl')} not found (a corpus folder from `codelm corpus`)")
    code_dir = trimmed_training_text(corpus, s.out / "data" / "code", s.train_chars)
    tokenizer, tdir = prepare_tokenizer(s, code_dir, probe.tokenizer.vocab_size or 1024)
    drills = lcft_drills = None
    if s.drill_weight > 0:
        count = max(200, _drills_needed(s.drill_weight, probe.train, L))
        drills = write_drills(tokenizer, code_dir, s.out / "data" / "retrieval-drills.jsonl", L, count)
    if s.lcft_drill_weight > 0:
        n = s.lcft_factor * L
        ft = _recipe(lcft_raw, s.lcft_overrides, {"data.seq_len": n}, LCFT_RECIPE).train
        count = max(100, _drills_needed(s.lcft_drill_weight, ft, n))
        lcft_drills = write_drills(tokenizer, code_dir, s.out / "data" / f"retrieval-drills-{n}.jsonl", n, count,
                                   seed=1)
    plan = Plan(L, pre_raw, lcft_raw, code_dir, drills, lcft_drills, tdir)
    data = eval_data(s, plan, tokenizer)
    timings["prepare_s"] = time.time() - t0

    ms = methods(s.lcft_factor)
    if s.methods:
        unknown = sorted(set(s.methods) - {m.name for m in ms})
        if unknown:
            raise ConfigError(f"lab: unknown method(s) {unknown}; choose from {[m.name for m in ms]}")
        ms = [m for m in ms if m.name in s.methods]
    bases = sorted({m.base for m in ms})
    eval_keys = _eval_keys(s, pre_raw, lcft_raw)
    results: dict[str, dict[int, dict]] = {m.name: {} for m in ms}
    for seed in range(s.seeds) if s.only_seed is None else [s.only_seed]:
        finals: dict[str, Path] = {}
        for kind in bases:
            t0, c0 = time.time(), time.process_time()
            r = pretrain_recipe(s, plan, seed, kind)
            plan.pretrain_tokens = r.train.max_steps * r.train.batch_tokens
            say(f"lab length: 2/4 seed {seed}: pretraining {kind} at L={L} "
                f"({r.train.max_steps} steps x {r.train.batch_tokens} tokens)")
            finals[kind] = train_once(r, s.show_progress)
            timings[f"pretrain_{kind}_s"] = timings.get(f"pretrain_{kind}_s", 0.0) + time.time() - t0
            timings["pretrain_cpu_s"] = timings.get("pretrain_cpu_s", 0.0) + time.process_time() - c0
        for m in ms:
            t0, c0 = time.time(), time.process_time()
            if m.lcft is not None:
                r = lcft_recipe(s, plan, seed, m, finals[m.base])
                plan.lcft_tokens = r.train.max_steps * r.train.batch_tokens
                say(f"lab length: 3/4 seed {seed}: {m.label} ({r.train.max_steps} steps x "
                    f"{r.train.batch_tokens} tokens at {r.data.seq_len})")
                path = train_once(r, s.show_progress)
                timings["lcft_s"] = timings.get("lcft_s", 0.0) + time.time() - t0
                timings["lcft_cpu_s"] = timings.get("lcft_cpu_s", 0.0) + time.process_time() - c0
            else:
                path = finals[m.base]
            t0, c0 = time.time(), time.process_time()
            cache = s.out / ("evals" if s.eval_split == "report" else "evals-select") / f"seed{seed}" / f"{m.name}.json"
            got = json.loads(cache.read_text()) if cache.is_file() else None
            settings_key = eval_keys[m.lcft is not None]
            if got is None or got.get("key") != settings_key:
                say(f"lab length: 4/4 seed {seed}: evaluating {m.label}")
                ev = evaluate_model(_load_model(path, m.inference), tokenizer, data, s, seed, m.name)
                got = {"key": settings_key, "method": m.name, "seed": seed, "model": str(path),
                       "eval_seconds": round(time.time() - t0, 1),
                       "eval_cpu_seconds": round(time.process_time() - c0, 1), **ev}
                write_json(cache, got)
            results[m.name][seed] = got
            timings["eval_s"] = timings.get("eval_s", 0.0) + time.time() - t0
            timings["eval_cpu_s"] = timings.get("eval_cpu_s", 0.0) + time.process_time() - c0

    if s.only_seed is not None:
        say(f"lab length: seed {s.only_seed} done in {(time.time() - t_start) / 60:.1f} min; run the command "
            "without --only-seed to write the tables")
        return {"only_seed": s.only_seed, "timings_s": {k: round(v, 1) for k, v in timings.items()}}
    summary = summarize(results, ms, data, L, s, plan)
    summary["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    summary["compute_s"] = compute_seconds(s.out, results)
    summary["seconds"] = round(time.time() - t_start, 1)
    write_json(s.out / "results.json", summary)
    table = table_markdown(summary)
    atomic_write(s.out / "table.md", table)
    plot_all(summary, s.out)
    atomic_write(s.out / "README.md", explanation(summary, table))
    say(table)
    say(f"lab length: done in {summary['seconds'] / 60:.1f} min; see {s.out / 'README.md'}")
    return summary


def quick_recipes(pre: dict, lcft: dict) -> tuple[dict, dict]:
    """Small sizes for tests and a first look: L = 32 bytes, a 2-layer model, 400 steps, 2% fine-tunes."""
    pre, lcft = copy.deepcopy(pre), copy.deepcopy(lcft)
    pre.setdefault("tokenizer", {})["vocab_size"] = 264  # bytes: 256 + 8 special tokens, no merges
    pre.setdefault("model", {})["config"] = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4,
                                              "multiple_of": 32}
    pre.setdefault("data", {})["seq_len"] = 32
    pre.setdefault("train", {}).update(max_steps=400, batch_tokens=1024, micro_batch_size=32, warmup_steps=40,
                                       lr=5e-3, checkpoint_every=400)
    lcft.setdefault("train", {}).update(max_steps=8, batch_tokens=1024, micro_batch_size=8, warmup_steps=1,
                                        lr=3.3e-4, checkpoint_every=8)   # 1/15 of the quick peak
    return pre, lcft


def quick_settings(s: LabSettings) -> LabSettings:
    """--quick: perplexity only. The paper's key-retrieval prompt (124 bytes) does not fit L = 32 bytes; at
    L = 64 BPE tokens the key and question leave a drill no room for filler, so prompts of L tokens ask
    distances never trained. Retrieval at test sizes needs L = 96 and ~1,500 steps (tests/test_lab.py)."""
    s.quick, s.retrieval, s.drill_weight, s.lcft_drill_weight = True, False, 0.0, 0.0
    s.lcft_factor = 4  # 8 steps of 4 rows at 4L: each fine-tune a few seconds
    s.train_chars, s.eval_tokens = min(s.train_chars, 1_500_000), min(s.eval_tokens, 4096)
    return s


# ---------------------------------------------------------------------- CLI
def lab_main(cfg: LabLengthConfig) -> int:
    """Entry point of `codelm lab length` (its flags: LabLengthConfig, in codelm/lab/length_config.py)."""
    claim_output(cfg.out, "lab-length", folder=True, force=cfg.force, what="lab folder",
                 legacy=lambda p: (p / "runs").is_dir() or (p / "results.json").exists())
    s = LabSettings(out=Path(cfg.out), seeds=cfg.seeds if cfg.seeds is not None else (1 if cfg.quick else 3),
                    quick=cfg.quick, overrides=list(cfg.set or []), lcft_overrides=list(cfg.lcft_set or []))
    if cfg.quick:
        quick_settings(s)
    if cfg.methods:
        s.methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    for name in ("lcft_factor", "retrieval_examples", "eval_tokens", "drill_weight", "drill_loss_weight",
                 "lcft_drill_weight", "lcft_drill_loss_weight", "train_chars", "eval_split", "sweep_multiple",
                 "threads", "retrieval_max_multiple", "only_seed"):
        v = getattr(cfg, name)
        if v is not None:
            setattr(s, name, v)
    if cfg.seq_len is not None:
        s.overrides.append(f"data.seq_len={cfg.seq_len}")
    run_lab(s)
    return 0

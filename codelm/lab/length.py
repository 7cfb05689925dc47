"""`codelm lab length`: train short, test long, on this machine, with numbers and plots.

A tiny Llama is trained at a short length L on the Python standard library, then compared:

  rope             RoPE, θ = 1e4, as trained
  rope-1e6-infer   the same weights with θ raised to 1e6 at inference only
  lcft-1e4         long-context fine-tuning at 8L keeping θ = 1e4
  pi-ft            position interpolation (positions / 8) + the same fine-tune
  lcft-1e6         long-context fine-tuning at 8L with θ = 1e6 (Code Llama's LCFT)
  alibi            ALiBi (no rotary embedding) trained at L from scratch

Each is measured by perplexity at L/4 .. 16L on long held-out files, key retrieval (the paper's
`my_function` task) by length and relative key position, a position sweep, and loss by position
inside a 16L window; over several seeds (mean and spread). Outputs in OUT: results.json,
table.md, README.md (what the curves show and why), ppl_by_length.png, key_retrieval.png,
loss_by_position.png, rope_decay.png.

A tiny model does not learn to retrieve a value from minutes of standard-library code, so a
share of its training rows are retrieval drills: the evaluation's task on training code (random
value, random key-to-question distance), each at most L tokens, trained on the answer only with
a loss weight that makes a drill's few answer tokens count like a row of code. The skill exists
inside the trained window; the lab asks whether it survives at distances never trained. The
fine-tunes train on code only by default: with 2% of the pretraining tokens, drills in their mix
(`lcft_drill_weight`: drills as long as their rows, code trained too, the answer weighted) kept a
little more retrieval on some seeds and cost the perplexity at 8L that LCFT is for (a 3-seed
comparison is in the README).

Training goes through the ordinary recipes (recipes/lab-length.toml for the pretraining at L,
recipes/lcft-lab.toml for the fine-tunes), so a larger lab is `--set` overrides away. Every stage
is resumable: run the same command again and finished runs and evaluations are reused.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from codelm.errors import ConfigError, DataError
from codelm.files import atomic_write, write_json
from codelm.evaluate import longctx as lc

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
    lcft_factor: int = 8              # fine-tune length = factor x L
    train_chars: int = 3_000_000      # training text kept from the corpus (the runs read a fraction)
    drill_weight: float = 0.5         # share of pretraining sequences drawn from retrieval drills
    drill_loss_weight: float = 40.0   # each drill answer token counts this many code tokens in the loss
    # Drills in the fine-tunes (off by default: at 2% of the tokens they cost perplexity at 8L and kept
    # little retrieval): as long as their rows, their code trained too, the answer weighing this much.
    lcft_drill_weight: float = 0.0
    lcft_drill_loss_weight: float = 1000.0
    eval_tokens: int = 16_384         # held-out tokens scored at every length
    retrieval_examples: int = 8       # per (length, position) and seed
    sweep_multiple: int = 8           # the position sweep runs at sweep_multiple x L
    max_length_multiple: int = 16
    methods: list[str] | None = None  # which methods to run (default: all six)
    retrieval: bool = True            # key retrieval and the position sweep (off: perplexity only)
    corpus: Path | None = None        # an existing corpus folder (train.jsonl, valid.jsonl) instead of building one
    corpus_sources: list[str] | None = None   # default: the standard library (tests left out)
    show_progress: bool = True


# ------------------------------------------------------------------ helpers
def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_raw_recipe(name_or_path: str) -> tuple[dict, Path]:
    from codelm.demo import find_recipe
    from codelm.train.recipe import _toml

    p = Path(name_or_path)
    path = p if p.is_file() else find_recipe(name_or_path)
    try:
        return _toml().loads(path.read_text(encoding="utf-8")), path
    except Exception as e:
        raise ConfigError(f"{path}: not a readable recipe ({e})") from None


def _recipe(raw: dict, overrides: list[str], changes: dict, where: str):
    """A Recipe from a raw TOML table: the user's --set first, then the lab's own settings."""
    from codelm.train.recipe import apply_overrides, recipe_from_dict

    raw = apply_overrides(copy.deepcopy(raw), overrides)
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    t, d = raw.setdefault("train", {}), raw.get("data", {})
    seq = d.get("seq_len", 4096)
    # The lab changes lengths (--seq-len, --lcft-factor): keep the batch a whole number of sequences and
    # the micro-batch a divisor of it, as the training loop requires.
    seqs = max(1, t.get("batch_tokens", seq) // seq)
    t["batch_tokens"] = seqs * seq
    micro = min(t.get("micro_batch_size", 1), seqs)
    while seqs % micro:
        micro -= 1
    t["micro_batch_size"] = micro
    return recipe_from_dict(raw, where)


# ------------------------------------------------------------------- corpus
def prepare_corpus(s: LabSettings) -> Path:
    """OUT/corpus: the Python files of the standard library (or the given folders), tests left out, through
    codelm corpus's quality filters, 10% of the files held out by a hash of their path. No deduplication or
    benchmark decontamination (`codelm corpus` does those): the lab evaluates on its own held-out files only."""
    from codelm.data.corpus import CorpusOptions, detect_language, list_files, quality_problem, resolve_sources, split_of
    from codelm.demo import DEMO_EXCLUDE

    corpus = s.out / "corpus"
    if (corpus / "train.jsonl").is_file() and (corpus / "valid.jsonl").is_file():
        return corpus
    opts = CorpusOptions(languages=["python"], exclude=DEMO_EXCLUDE, valid_fraction=0.1)
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
    from codelm.data.corpus import read_corpus

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
    from codelm.data.corpus import corpus_texts
    from codelm.tokenizer import Tokenizer, train_tokenizer

    tdir = s.out / "tokenizer"
    if (tdir / "tokenizer.json").is_file():
        tok = Tokenizer.load(tdir)
        if tok.vocab_size == vocab_size:
            return tok, tdir
    tok = train_tokenizer(list(corpus_texts(code_dir, "train")), vocab_size, show_progress=False)
    tmp = s.out / ".tokenizer.tmp"
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    tok.save(tmp)
    shutil.rmtree(tdir, ignore_errors=True)
    os.replace(tmp, tdir)
    return Tokenizer.load(tdir), tdir


def write_drills(tokenizer, code_dir: Path, dest: Path, seq_len: int, n: int, seed: int = 0) -> Path:
    """dest: JSONL of n retrieval drills, {"prompt", "completion"}, each at most seq_len tokens with BOS: the
    key-retrieval task itself (the paper's `my_function` key and question) with a random value, a random
    amount of training code (uniform up to what fits) split at a random point by the key;
    the completion is the value and a newline."""
    if dest.is_file():
        return dest
    from codelm.data.corpus import corpus_texts

    rng = np.random.default_rng([seed, 7])
    stream = lc.code_token_stream(list(corpus_texts(code_dir, "train")), tokenizer, max_tokens=400_000)
    rows = []
    for _ in range(n):
        value = int(rng.integers(10, 100))
        key, question = lc.key_snippets(tokenizer, value)
        answer = tokenizer.encode(f"{value}\n")
        room = seq_len - 1 - len(key) - len(question) - len(answer)
        if room < 0:
            raise ConfigError(f"lab: data.seq_len={seq_len} is too short for a retrieval drill "
                              f"({seq_len - room} tokens); use 128 or more")
        # Short distances from key to question are the most frequent, which is what lets a tiny model find
        # the skill at all (uniform distances up to L were not learned in the same number of steps).
        n_fill = int(rng.integers(0, room + 1))
        before = int(rng.integers(0, n_fill + 1))
        start = int(rng.integers(0, len(stream) - n_fill))
        fill = stream[start:start + n_fill].tolist()
        prompt = tokenizer.decode(fill[:before] + key + fill[before:] + question)
        rows.append(json.dumps({"prompt": prompt, "completion": f"{value}\n"}) + "\n")
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, "".join(rows))
    return dest


# ----------------------------------------------------------------- training
def _train(recipe, show_progress: bool) -> Path:
    from codelm.train.loop import train

    final = recipe.out_dir / "final"
    made_by = recipe.out_dir / "recipe.json"
    if made_by.is_file() and _essentials(json.loads(made_by.read_text())) != _essentials(recipe.to_dict()):
        raise ConfigError(f"{recipe.out_dir} was trained with other settings; use another --out for these, or "
                          f"delete that folder to train it again (a copy of the lab folder keeps the other runs)")
    if (final / "config.json").is_file() and (recipe.out_dir / "summary.json").is_file():
        return final
    result = train(recipe, resume=True, show_progress=show_progress)
    if result.final_dir is None:
        raise ConfigError(f"{recipe.out_dir}: training stopped before its last step (train.stop_at_step?)")
    return result.final_dir


def _essentials(recipe: dict) -> str:
    """What a finished run's reuse depends on: the model, its start, the length, the schedule and the seed.
    Paths count relative to the run's folder, so a lab folder that was moved or copied is still reused."""
    m, d, t = recipe["model"], recipe["data"], recipe["train"]
    here = recipe["run"]["out_dir"]

    def where(path):
        return None if path is None else os.path.relpath(path, here)

    return json.dumps([m.get("preset"), where(m.get("init_from")), m.get("config"), d.get("seq_len"),
                       [(where(x.get("path")), x.get("weight"), x.get("loss_weight", 1.0),
                         x.get("prompt_loss_weight", 0.0))
                        for x in d.get("sources", [])],
                       [t.get(k) for k in ("max_steps", "batch_tokens", "lr", "warmup_steps")],
                       recipe["run"].get("seed")], sort_keys=True)


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
    return _recipe(plan.pretrain_raw, s.overrides, changes, f"{PRETRAIN_RECIPE} ({kind}, seed {seed})")


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
    return _recipe(plan.lcft_raw, s.lcft_overrides, changes, f"{LCFT_RECIPE} ({m.name}, seed {seed})")


# --------------------------------------------------------------- evaluation
@dataclass
class EvalData:
    docs: list
    filler: np.ndarray
    ppl_lengths: list[int]
    kr_lengths: list[int]
    sweep_length: int
    window: int


def eval_data(s: LabSettings, plan: Plan, tokenizer) -> EvalData:
    L = plan.seq_len
    top = s.max_length_multiple * L
    texts = lc.held_out_texts(plan.code_dir, "valid")
    docs = lc.long_documents(texts, tokenizer, min_tokens=top + 1, max_tokens_each=top + 1,
                             total_tokens=s.eval_tokens)
    mults = [m for m in (1, 2, 4, 8, 16, 32, 64) if m <= s.max_length_multiple]
    return EvalData(docs=docs, filler=lc.code_token_stream(texts, tokenizer),
                    ppl_lengths=[L // 4, L // 2] + [m * L for m in mults], kr_lengths=[m * L for m in mults],
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
    from codelm.model.checkpoint import load_checkpoint

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
    settings = {k: v for k, v in asdict(s).items() if k not in ("out", "show_progress", "seeds", "methods")}
    return {False: _fingerprint({"settings": {k: v for k, v in settings.items() if not k.startswith("lcft_")},
                                 "recipes": [pre_raw]}),
            True: _fingerprint({"settings": settings, "recipes": [pre_raw, lcft_raw]})}


def run_lab(s: LabSettings) -> dict:
    """Train, fine-tune and evaluate every method for every seed; write the table, plots and notes."""
    if s.seeds < 1:
        raise ConfigError(f"lab: --seeds must be at least 1, got {s.seeds}")
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
    from codelm.files import mark_output

    mark_output(s.out, "lab-length")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    timings: dict[str, float] = {}

    pre_raw, _ = _load_raw_recipe(PRETRAIN_RECIPE)
    lcft_raw, _ = _load_raw_recipe(LCFT_RECIPE)
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
    for seed in range(s.seeds):
        finals: dict[str, Path] = {}
        for kind in bases:
            t0 = time.time()
            r = pretrain_recipe(s, plan, seed, kind)
            plan.pretrain_tokens = r.train.max_steps * r.train.batch_tokens
            say(f"lab length: 2/4 seed {seed}: pretraining {kind} at L={L} "
                f"({r.train.max_steps} steps x {r.train.batch_tokens} tokens)")
            finals[kind] = _train(r, s.show_progress)
            timings[f"pretrain_{kind}_s"] = timings.get(f"pretrain_{kind}_s", 0.0) + time.time() - t0
        for m in ms:
            t0 = time.time()
            if m.lcft is not None:
                r = lcft_recipe(s, plan, seed, m, finals[m.base])
                plan.lcft_tokens = r.train.max_steps * r.train.batch_tokens
                say(f"lab length: 3/4 seed {seed}: {m.label} ({r.train.max_steps} steps x "
                    f"{r.train.batch_tokens} tokens at {r.data.seq_len})")
                path = _train(r, s.show_progress)
                timings["lcft_s"] = timings.get("lcft_s", 0.0) + time.time() - t0
            else:
                path = finals[m.base]
            t0 = time.time()
            cache = s.out / "evals" / f"seed{seed}" / f"{m.name}.json"
            got = json.loads(cache.read_text()) if cache.is_file() else None
            settings_key = eval_keys[m.lcft is not None]
            if got is None or got.get("key") != settings_key:
                say(f"lab length: 4/4 seed {seed}: evaluating {m.label}")
                ev = evaluate_model(_load_model(path, m.inference), tokenizer, data, s, seed, m.name)
                got = {"key": settings_key, "method": m.name, "seed": seed, "model": str(path),
                       "eval_seconds": round(time.time() - t0, 1), **ev}
                write_json(cache, got)
            results[m.name][seed] = got
            timings["eval_s"] = timings.get("eval_s", 0.0) + time.time() - t0

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
                                        checkpoint_every=8)
    return pre, lcft


def quick_settings(s: LabSettings) -> LabSettings:
    """--quick: the paper's key-retrieval prompt (124 bytes) does not fit L = 32, so perplexity only."""
    s.quick, s.retrieval, s.drill_weight, s.lcft_drill_weight = True, False, 0.0, 0.0
    s.lcft_factor = 4  # 8 steps of 4 rows at 4L: each fine-tune a few seconds
    s.train_chars, s.eval_tokens = min(s.train_chars, 1_500_000), min(s.eval_tokens, 4096)
    return s


def compute_seconds(out: Path, results: dict) -> dict:
    """Time spent on every run and evaluation of this lab, over all the invocations that made them."""
    train = {}
    for summary in sorted((out / "runs").glob("seed*/*/summary.json")):
        train[f"{summary.parent.parent.name}/{summary.parent.name}"] = json.loads(summary.read_text())["seconds"]
    evals = sum(r.get("eval_seconds", 0.0) for per_seed in results.values() for r in per_seed.values())
    return {"training": round(sum(train.values()), 1), "evaluation": round(evals, 1),
            "total": round(sum(train.values()) + evals, 1), "runs": {k: round(v, 1) for k, v in train.items()}}


# ------------------------------------------------------------ summarising
def _stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max()), "values": [float(v) for v in a]}


def summarize(results: dict, ms: list[Method], data: EvalData, L: int, s: LabSettings, plan: Plan) -> dict:
    out = {"L": L, "seeds": s.seeds, "drill_weight": s.drill_weight, "drill_loss_weight": s.drill_loss_weight,
           "lcft_drill_weight": s.lcft_drill_weight, "lcft_drill_loss_weight": s.lcft_drill_loss_weight, "lcft_length": s.lcft_factor * L, "pretrain_tokens": plan.pretrain_tokens,
           "lcft_tokens": plan.lcft_tokens, "lcft_share": plan.lcft_tokens / max(plan.pretrain_tokens, 1),
           "eval_tokens": sum(len(d) for d in data.docs), "eval_documents": len(data.docs),
           "retrieval_examples_per_cell_per_seed": s.retrieval_examples, "ppl_lengths": data.ppl_lengths,
           "kr_lengths": data.kr_lengths, "kr_positions": list(lc.PAPER_POSITIONS), "sweep_length": data.sweep_length,
           "sweep_positions": list(lc.SWEEP_POSITIONS), "methods": {}}
    for m in ms:
        runs = [results[m.name][k] for k in sorted(results[m.name])]
        entry = {"label": m.label, "base": m.base, "fine_tuned": m.lcft is not None,
                 "perplexity": {str(n): _stats([r["perplexity"][str(n)]["ppl"] for r in runs])
                                for n in data.ppl_lengths},
                 "loss_by_position": {"edges": runs[0]["loss_by_position"]["edges"],
                                      "loss": np.mean([r["loss_by_position"]["loss"] for r in runs], axis=0).tolist()}}
        if "key_retrieval" in runs[0]:
            entry["key_retrieval"] = {k: _stats([r["key_retrieval"][k] for r in runs]) for k in runs[0]["key_retrieval"]}
            entry["key_retrieval_by_length"] = {
                str(n): _stats([np.mean([r["key_retrieval"][lc.cell_key(n, p)] for p in lc.PAPER_POSITIONS])
                                for r in runs]) for n in data.kr_lengths}
            entry["sweep"] = {k: _stats([r["sweep"][k] for r in runs]) for k in runs[0]["sweep"]}
        out["methods"][m.name] = entry
    out["retrieval"] = all("key_retrieval" in e for e in out["methods"].values())
    for m in ms:
        if m.lcft is not None and m.base in out["methods"]:
            before = out["methods"][m.base]["perplexity"][str(L // 2)]
            out["methods"][m.name]["ppl_half_L_before"] = before
    goal = out["methods"].get("lcft-1e6")
    if goal:
        ratio = goal["perplexity"][str(8 * L)]["mean"] / goal["perplexity"][str(L)]["mean"] \
            if str(8 * L) in goal["perplexity"] else float("nan")
        out["goal"] = {"ppl_8L_over_L": ratio, "lcft_share": out["lcft_share"],
                       "met": bool(ratio <= 1.10 and out["lcft_share"] <= 0.02)}
    return out


def _ms(st: dict, fmt: str = "{:.2f}", pct: bool = False) -> str:
    f = (lambda v: f"{100 * v:.0f}") if pct else (lambda v: fmt.format(v))
    if st["std"] == 0.0 and len(st["values"]) == 1:
        return f(st["mean"])
    return f"{f(st['mean'])} ± {f(st['std'])}"


def _mult(n: int, L: int) -> str:
    return f"{n // L}L" if n >= L else f"L/{L // n}"


def table_markdown(summary: dict) -> str:
    L = summary["L"]
    lens = [n for n in summary["ppl_lengths"] if n >= L // 2]
    head = "| method | " + " | ".join(_mult(n, L) for n in lens) + " |"
    lines = [f"Perplexity on held-out long files by context length (L = {L} tokens; mean ± std over "
             f"{summary['seeds']} seed(s); L/2 of a fine-tuned model shows before → after the fine-tune)", "",
             head, "|---|" + "---|" * len(lens)]
    for name, e in summary["methods"].items():
        cells = []
        for n in lens:
            cell = _ms(e["perplexity"][str(n)])
            if n == L // 2 and "ppl_half_L_before" in e:
                cell = f"{e['ppl_half_L_before']['mean']:.2f} → {cell}"
            cells.append(cell)
        lines.append(f"| {e['label']} | " + " | ".join(cells) + " |")
    if summary["retrieval"]:
        lines += [""] + retrieval_tables(summary)
    g = summary.get("goal")
    if g:
        lines += ["", f"Goal (LCFT θ=1e6): perplexity at 8L / at L = {g['ppl_8L_over_L']:.3f} (≤ 1.10) with "
                  f"{100 * g['lcft_share']:.1f}% of the pretraining tokens (≤ 2%): "
                  f"{'met' if g['met'] else 'not met'}."]
    return "\n".join(lines) + "\n"


def retrieval_tables(summary: dict) -> list[str]:
    L, kl, sp = summary["L"], summary["kr_lengths"], summary["sweep_positions"]
    pos = "/".join(f"{p:g}" for p in summary["kr_positions"])
    lines = [f"Key retrieval accuracy % (paper's task; mean over key positions {pos} and "
             f"{summary['retrieval_examples_per_cell_per_seed']} examples per cell and seed; ± std over seeds)", "",
             "| method | " + " | ".join(_mult(n, L) for n in kl) + " |", "|---|" + "---|" * len(kl)]
    for e in summary["methods"].values():
        lines.append(f"| {e['label']} | " + " | ".join(_ms(e["key_retrieval_by_length"][str(n)], pct=True)
                                                  for n in kl) + " |")
    lines += ["", f"Position sweep at {_mult(summary['sweep_length'], L)}: accuracy % by relative key position "
              "(0 = start of the context, 1 = just before the question)", "",
              "| method | " + " | ".join(f"{p:g}" for p in sp) + " |", "|---|" + "---|" * len(sp)]
    for e in summary["methods"].values():
        lines.append(f"| {e['label']} | " + " | ".join(
            _ms(e["sweep"][lc.cell_key(summary["sweep_length"], p)], pct=True) for p in sp) + " |")
    return lines


# -------------------------------------------------------------------- plots
COLORS = {"rope": "#d62728", "rope-1e6-infer": "#ff9896", "lcft-1e4": "#9467bd", "pi-ft": "#ff7f0e",
          "lcft-1e6": "#2ca02c", "alibi": "#1f77b4"}


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def rope_decay_bound(head_dim: int, theta: float, distances: np.ndarray) -> np.ndarray:
    """The relative upper bound on |q·k| at distance m (RoFormer §3.4.3, plotted in Code Llama App. G.1):
    (1/(d/2)) Σ_j |Σ_{k<j} exp(i m θ_k)| with θ_k = θ^(-2k/d)."""
    freqs = theta ** (-np.arange(head_dim // 2) * 2.0 / head_dim)
    phases = np.exp(1j * np.outer(distances, freqs))            # [M, d/2]
    partial = np.cumsum(phases, axis=1)
    return np.abs(partial).mean(axis=1)


def plot_all(summary: dict, out: Path) -> None:
    plt = _plt()
    L = summary["L"]
    ms = summary["methods"]

    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    xs = summary["ppl_lengths"]
    for name, e in ms.items():
        mean = [e["perplexity"][str(n)]["mean"] for n in xs]
        std = [e["perplexity"][str(n)]["std"] for n in xs]
        ax.errorbar([n / L for n in xs], mean, yerr=std, marker="o", ms=4, lw=1.6, capsize=3,
                    color=COLORS.get(name), label=e["label"])
    ax.axvline(1, color="grey", ls=":", lw=1)
    ax.axvline(summary["lcft_length"] / L, color="grey", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(f"context length (multiples of the training length L = {L})")
    ax.set_ylabel("perplexity (held-out long files)")
    ax.set_title("Train short, test long: perplexity by context length")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save(fig, out / "ppl_by_length.png")

    if summary["retrieval"]:
        plot_retrieval(summary, out)
    plot_loss_by_position(summary, out)
    plot_rope_decay(out)


def plot_retrieval(summary: dict, out: Path) -> None:
    plt = _plt()
    L, ms = summary["L"], summary["methods"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for name, e in ms.items():
        kl = summary["kr_lengths"]
        a1.errorbar([n / L for n in kl], [100 * e["key_retrieval_by_length"][str(n)]["mean"] for n in kl],
                    yerr=[100 * e["key_retrieval_by_length"][str(n)]["std"] for n in kl], marker="o", ms=4,
                    capsize=3, color=COLORS.get(name), label=e["label"])
        sp = summary["sweep_positions"]
        a2.errorbar(sp, [100 * e["sweep"][lc.cell_key(summary["sweep_length"], p)]["mean"] for p in sp],
                    yerr=[100 * e["sweep"][lc.cell_key(summary["sweep_length"], p)]["std"] for p in sp],
                    marker="o", ms=4, capsize=3, color=COLORS.get(name), label=e["label"])
    a1.set_xscale("log", base=2)
    a1.set_xlabel("context length (multiples of L)")
    a1.set_ylabel("key retrieval accuracy %")
    a1.set_title("by length (key at relative positions 0, 0.2, 0.4)")
    a2.set_xlabel("relative position of the key (0 = start, 1 = next to the question)")
    a2.set_title(f"position sweep at {_mult(summary['sweep_length'], L)}")
    for a in (a1, a2):
        a.set_ylim(-5, 105)
        a.grid(alpha=0.3)
    a1.legend(fontsize=7)
    _save(fig, out / "key_retrieval.png")


def plot_loss_by_position(summary: dict, out: Path) -> None:
    plt = _plt()
    L, ms = summary["L"], summary["methods"]
    fig, ax = plt.subplots(figsize=(7.5, 4.4), dpi=110)
    for name, e in ms.items():
        lp = e["loss_by_position"]
        mids = [(a + b) / 2 / L for a, b in zip(lp["edges"], lp["edges"][1:])]
        ax.plot(mids, lp["loss"], marker=".", lw=1.4, color=COLORS.get(name), label=e["label"])
    ax.axvline(1, color="grey", ls=":", lw=1)
    ax.axvline(summary["lcft_length"] / L, color="grey", ls="--", lw=1)
    ax.set_xlabel("position inside the window (multiples of L)")
    ax.set_ylabel("mean token loss (nats)")
    ax.set_title("Loss by position inside one long window")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out / "loss_by_position.png")


def plot_rope_decay(out: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    dist = np.arange(0, 20001, 20)
    for theta, style in ((1e4, "-"), (1e6, "--")):
        ax.plot(dist, rope_decay_bound(128, theta, dist), style, label=f"θ = {theta:.0e}, d = 128")
    ax.set_xlabel("relative distance between query and key (tokens)")
    ax.set_ylabel("relative upper bound on attention score")
    ax.set_title("Why θ = 1e6 helps far-away tokens (App. G.1)")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out / "rope_decay.png")


# --------------------------------------------------------------- the notes
def _growth(a: float, b: float) -> str:
    """How a perplexity moved from a to b, in words the notes can use whatever the numbers are."""
    r = b / a
    if r > 1.5:
        return f"rises {r:.1f}x"
    if r > 1.1:
        return f"rises {100 * (r - 1):.0f}%"
    if r < 0.95:
        return f"falls {100 * (1 - r):.0f}%"
    return "stays within 10%"


def _lcft_drills_text(summary: dict) -> str:
    share = summary.get("lcft_drill_weight", 0)
    if not share:
        return "The fine-tunes train on code only."
    return (f"The fine-tunes keep drills in their mix ({100 * share:.0f}% of their rows), as long as their rows, "
            f"their code trained too and the answer weighted {summary.get('lcft_drill_loss_weight', 0):g}x.")


def explanation(summary: dict, table: str) -> str:
    """README.md of a lab run: the table and plots, what each curve shows (numbers from this run) and why."""
    L = summary["L"]
    ms = summary["methods"]
    far = max(summary["ppl_lengths"]) // L
    top = max(summary["kr_lengths"]) // L
    ft = summary["lcft_length"] // L

    def ppl(name, mult):
        return ms[name]["perplexity"][str(int(mult * L))]["mean"]

    def kr(name, mult):
        by = ms[name].get("key_retrieval_by_length", {})
        n = str(int(mult * L))
        return f"{100 * by[n]['mean']:.0f}%" if n in by else "n/a"

    def curve(name):
        marks = sorted({1, ft, far} | ({8} if 8 <= far else set()))
        return ", ".join(f"{ppl(name, k):.2f} at {'' if k == 1 else k}L" for k in marks)

    bullets = []
    if "rope" in ms:
        bullets.append(
            f"**Plain RoPE past L.** Perplexity {_growth(ppl('rope', 1), ppl('rope', ft))} from L to {ft}L "
            f"({curve('rope')}); the loss-by-position curve shows where. Rotary embeddings turn the distance between a "
            "query and a key into rotation angles n·θ_i, θ_i = θ^(-2i/d). Within L the model has seen every angle of "
            "every frequency it uses; the slow frequencies never complete a turn within L, so longer distances give "
            "angle combinations never met in training, and the attention scores built from them are out of "
            "distribution.")
    if "rope-1e6-infer" in ms:
        vs = [f"{100 * (ppl('rope-1e6-infer', k) / ppl('rope', k) - 1):+.0f}% at {_mult(k * L, L)}"
              for k in (1, far)] if "rope" in ms else []
        bullets.append(
            f"**θ raised at inference only**: {curve('rope-1e6-infer')}"
            + (f" ({', '.join(vs)} against the unchanged model)" if vs else "") + ". A new θ changes every angle "
            "the model learned, inside the window too, which costs accuracy at short range; slower rotations also "
            "keep long distances nearer to angles seen in training. Without fine-tuning the model never learns the "
            "new angles: in the paper's Table 18 (key retrieval) this row equals the unchanged model.")
    if "lcft-1e4" in ms:
        bullets.append(
            f"**Fine-tuning at {ft}L keeping θ = 1e4**: {curve('lcft-1e4')}. Training at {ft}L shows the model the "
            f"angles up to {ft}L; beyond that they are new again (Table 18's third row).")
    if "pi-ft" in ms:
        bullets.append(
            f"**Position interpolation ×{ft} + fine-tune**: {curve('pi-ft')}. Dividing positions by {ft} maps {ft}L onto the "
            "trained range, but squeezes the fast frequencies that carry local detail (compare L/2 before and after "
            f"the fine-tune in the table), and past {ft}L the angles are unseen again.")
    if "lcft-1e6" in ms:
        bullets.append(
            f"**LCFT with θ = 1e6 (Code Llama)**: {curve('lcft-1e6')}. A larger base slows every rotation, so the "
            "angles met at long distances stay close to ones a short fine-tune teaches. Appendix G's argument "
            "(rope_decay.png): RoPE's attention score has an upper bound that decays with distance; with θ = 1e6 it "
            "decays much more slowly, so far-away tokens can still contribute.")
    if "alibi" in ms:
        bullets.append(
            f"**ALiBi trained at L**: {curve('alibi')}, with no fine-tuning. Its penalty grows linearly with distance, "
            "so it reads long inputs much like a sliding window of recent tokens: a flat perplexity does not show "
            "that distant tokens are used. Key retrieval at a distance does.")
    if summary.get("retrieval"):
        mults = [k for k in (1, 2, 4) if k < top] + [top]
        parts = [f"{ms[m]['label']} " + ", ".join(f"{kr(m, k)} at {_mult(k * L, L)}" for k in mults) for m in ms]
        best_at_L = max(ms[m]["key_retrieval_by_length"][str(L)]["mean"] for m in ms)
        caveat = ""
        if best_at_L < 0.25:
            caveat = (" No model retrieves reliably even at L, so this run says nothing about retrieval at a "
                      "distance: the model has not learned the skill within its window (train longer, e.g. "
                      "`--set train.max_steps=4000`, or raise `--drill-weight`).")
        sweep = ""
        if "alibi" in ms and "sweep" in ms["alibi"]:
            sw = ms["alibi"]["sweep"]
            sl = summary["sweep_length"]
            near, far_key = sw.get(lc.cell_key(sl, 1.0)), sw.get(lc.cell_key(sl, 0.0))
            if near and far_key:
                sweep = (f" In the position sweep at {_mult(sl, L)}, ALiBi answers {100 * near['mean']:.0f}% when the "
                         f"key sits just before the question and {100 * far_key['mean']:.0f}% when it sits at the start "
                         "(its bias shrinks a distant key's weight, the key's content can still win).")
        bullets.append("**Key retrieval** (keys at relative positions 0, 0.2, 0.4): " + "; ".join(parts) + "."
                       + sweep + caveat)
    g = summary.get("goal")
    goal = ""
    if g:
        goal = (f"\nGoal of the issue: after LCFT with at most 2% of the pretraining tokens, perplexity at 8L within "
                f"10% of perplexity at L. Here: {100 * g['lcft_share']:.1f}% of the tokens and a ratio of "
                f"{g['ppl_8L_over_L']:.3f}: **{'met' if g['met'] else 'not met'}**.\n")
    retrieval_img = "![key retrieval](key_retrieval.png)\n\n" if summary.get("retrieval") else ""
    return f"""# Train short, test long

Training length L = {L} tokens; {summary['seeds']} seed(s); {summary['pretrain_tokens']:,} pretraining tokens per
model; each fine-tune {summary['lcft_tokens']:,} tokens at {summary['lcft_length']} ({100 * summary['lcft_share']:.1f}%
of pretraining). Perplexity on {summary['eval_tokens']:,} tokens of {summary['eval_documents']} held-out files, the
same tokens at every length. This invocation ran {summary.get('seconds', 0) / 60:.1f} minutes; the lab's runs and
evaluations took {summary.get('compute_s', {}).get('total', 0) / 60:.1f} minutes over all the invocations that made them.

![perplexity by context length](ppl_by_length.png)

{table}{goal}
{retrieval_img}![loss by position](loss_by_position.png)

## What the curves show

""" + "\n".join(f"* {b}" for b in bullets) + f"""

![RoPE decay bound](rope_decay.png)

## How it was measured

* Models: a tiny Llama trained from scratch at L by `recipes/lab-length.toml`; the fine-tunes continue from it
  with `recipes/lcft-lab.toml` (θ, scaling and length set per method).
* Perplexity: each held-out file is read with windows of n tokens advancing by n/2, so each token is scored once
  with n/2 to n tokens of context; the same tokens at every n.
* Key retrieval: the paper's `my_function` prompt in held-out code, prompts of exactly n tokens, the greedy
  answer read up to its first non-digit, exact match. A tiny model does not learn retrieval from minutes of code,
  so {100 * summary.get('drill_weight', 0):.0f}% of its training rows are drills: the same task on training code (random
  value, random key-to-question distance, each drill at most L tokens), the loss taken on the answer only and
  weighted {summary.get('drill_loss_weight', 0):g}x so that a few answer tokens weigh about as much as a row of code. The
  skill is taught inside the window; the question is whether it survives beyond it. {_lcft_drills_text(summary)}
* Loss by position: mean token loss at each position of {far}L-token windows from the start of held-out files.
"""


# ------------------------------------------------------------------ the demo
def demo_lcft_step(final_dir: str | Path, corpus_dir: str | Path, out: str | Path, quick: bool = False,
                   show_progress: bool = True, trained_length: int | None = None) -> dict:
    """The demo's long-context stage: a short LCFT of the demo model (recipes/lcft-demo.toml: θ → 1e6,
    4x its length) and a perplexity-by-length plot of the model before and after (OUT/ppl_by_length.png).
    `trained_length`: the context the model was trained at (its config's max_seq_len may be larger).
    Returns the numbers (also written to OUT/lcft.json)."""
    from codelm.model.checkpoint import load

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw, path = _load_raw_recipe("lcft-demo.toml")
    before = load(final_dir, dtype=torch.float32)
    L = trained_length or before.config.max_seq_len
    factor = 2 if quick else 4
    changes = {"model.init_from": str(final_dir), "run.out_dir": str(out / ("lcft-quick" if quick else "lcft")),
               "data.sources": [{"path": str(corpus_dir), "name": "stdlib"}], "data.seq_len": factor * L,
               "model.config": {**raw.get("model", {}).get("config", {}), "max_seq_len": factor * L}}
    if quick:
        changes.update({"train.max_steps": 3, "train.batch_tokens": 2 * factor * L, "train.micro_batch_size": 2,
                        "train.warmup_steps": 1, "train.checkpoint_every": 3, "train.eval_sequences": 4})
    else:
        changes["train.batch_tokens"] = max(factor * L, (raw["train"]["batch_tokens"] // (factor * L)) * factor * L)
    recipe = _recipe(raw, [], changes, str(path))
    final = _train(recipe, show_progress)
    after = load(final, dtype=torch.float32)
    texts = lc.held_out_texts(corpus_dir, "valid")
    mults = [0.5, 1, 2, 4] if quick else [0.5, 1, 2, 4, 8]
    lengths = [int(m * L) for m in mults]
    budget = 2 * max(lengths) if quick else 4 * max(lengths)
    try:
        docs = lc.long_documents(texts, before.tokenizer, min_tokens=max(lengths) + 1, total_tokens=budget)
    except DataError:   # a small held-out split without a file that long: read the files one after another
        stream = lc.code_token_stream(texts, before.tokenizer, max_tokens=budget)
        if len(stream) < max(lengths) + 1:
            raise DataError(f"{corpus_dir}: the held-out files hold {len(stream)} tokens, fewer than the "
                            f"{max(lengths) + 1} the longest window needs") from None
        docs = [np.concatenate([[before.tokenizer.bos_id], stream]).astype(np.int64)]
    curves = {"before": lc.perplexity_by_length(before.model.eval(), docs, lengths, progress=show_progress),
              "after": lc.perplexity_by_length(after.model.eval(), docs, lengths, progress=show_progress)}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    for key, label, color in (("before", f"trained at {L}, θ={before.config.rope_theta:g}", "#d62728"),
                              ("after", f"after LCFT at {factor * L}, θ={after.config.rope_theta:g}", "#2ca02c")):
        ax.plot([n / L for n in lengths], [curves[key][n]["ppl"] for n in lengths], "o-", color=color, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"context length (multiples of L = {L})")
    ax.set_ylabel("perplexity (held-out files)")
    ax.set_title("Demo model: perplexity by context length")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out / "ppl_by_length.png")
    result = {"trained_length": L, "lcft_length": factor * L, "steps": recipe.train.max_steps,
              "tokens": recipe.train.max_steps * recipe.train.batch_tokens, "model": str(final),
              "perplexity": {k: {str(n): v["ppl"] for n, v in c.items()} for k, c in curves.items()}}
    write_json(out / "lcft.json", result)
    return result


# ---------------------------------------------------------------------- CLI
def lab_main(args) -> int:
    if args.experiment == "length":
        from codelm.files import claim_output

        claim_output(args.out, "lab-length", folder=True, force=getattr(args, "force", False), what="lab folder",
                     legacy=lambda p: (p / "runs").is_dir() or (p / "results.json").exists())
        s = LabSettings(out=Path(args.out), seeds=args.seeds if args.seeds is not None else (1 if args.quick else 3),
                        quick=args.quick, overrides=list(args.set or []), lcft_overrides=list(args.lcft_set or []))
        if args.quick:
            quick_settings(s)
        for name in ("lcft_factor", "retrieval_examples", "eval_tokens", "drill_weight", "drill_loss_weight",
                     "lcft_drill_weight", "lcft_drill_loss_weight", "train_chars"):
            v = getattr(args, name, None)
            if v is not None:
                setattr(s, name, v)
        if args.seq_len is not None:
            s.overrides.append(f"data.seq_len={args.seq_len}")
        run_lab(s)
        return 0
    if args.experiment == "longctx":
        return lc.longctx_main(args)
    raise ConfigError(f"lab: unknown experiment {args.experiment!r} (length, longctx)")

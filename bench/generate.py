"""Decode and prefill speed: codelm's engine against transformers' generate on the same weights.

fp32, 2 threads, greedy, 64-token prompt, 128 new tokens, batch 1 and 8; prefill tokens/s on 2,048 tokens.
Run by hand:  .venv/bin/python bench/generate.py [--sizes 15m,110m] [--repeats 3] [--compile]
Timings alternate codelm / transformers in one process and report medians and ratios (the machine is noisy).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from codelm.generate.sampler import SamplingParams, generate
from codelm.model.checkpoint import save_hf
from codelm.model.config import ModelConfig
from codelm.model.llama import Transformer

SIZES = {
    "15m": dict(dim=256, n_layers=8, n_heads=8, vocab_size=32016, multiple_of=32, max_seq_len=4096),
    "110m": dict(dim=768, n_layers=12, n_heads=12, vocab_size=32016, multiple_of=256, max_seq_len=4096),
}


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="15m,110m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--prefill-len", type=int, default=2048)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--compile", action="store_true", help="also time codelm with a torch.compile'd decode step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {args.threads}")
    for size in args.sizes.split(","):
        cfg = ModelConfig(**SIZES[size])
        torch.manual_seed(0)
        ours = Transformer(cfg).eval()
        with tempfile.TemporaryDirectory() as d:
            save_hf(ours, d)
            ref = transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        print(f"\n== {size}: {ours.num_params() / 1e6:.1f}M parameters ==")
        n = args.new_tokens
        for bs in [int(b) for b in args.batches.split(",")]:
            prompts = torch.randint(3, cfg.vocab_size, (bs, args.prompt_len))
            plist = prompts.tolist()
            def run_ours(compiled=False):
                params = SamplingParams(max_new_tokens=n, compile=compiled)
                gens = generate(ours, plist, params, stop_ids=set(), decode=lambda ids: "")
                assert all(len(g.tokens) == n for g in gens)
                return gens

            def run_ref():
                with torch.inference_mode():
                    return ref.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n,
                                        min_new_tokens=n, do_sample=False, pad_token_id=0)

            run_ours(), run_ref()  # warm-up
            # Same tokens from both engines (greedy on the same weights).
            a = [g.tokens for g in run_ours()]
            b = run_ref()[:, args.prompt_len:].tolist()
            agree = sum(x == y for x, y in zip(a, b))
            t_ours, t_ref = [], []
            for _ in range(args.repeats):
                t_ours.append(median_time(run_ours, 1))
                t_ref.append(median_time(run_ref, 1))
            to, tr = statistics.median(t_ours), statistics.median(t_ref)
            print(f"decode batch {bs}: codelm {bs * n / to:8.1f} tok/s  transformers {bs * n / tr:8.1f} tok/s  "
                  f"ratio {tr / to:5.2f}x  (identical greedy rows: {agree}/{bs})")
            if args.compile:
                t0 = time.perf_counter()
                c = [g.tokens for g in run_ours(True)]
                warm = time.perf_counter() - t0
                t_c, t_r = [], []
                for _ in range(args.repeats):
                    t_c.append(median_time(lambda: run_ours(True), 1))
                    t_r.append(median_time(run_ref, 1))
                tc, tr = statistics.median(t_c), statistics.median(t_r)
                print(f"  compiled  batch {bs}: codelm {bs * n / tc:8.1f} tok/s  transformers {bs * n / tr:8.1f} "
                      f"tok/s  ratio {tr / tc:5.2f}x  (first call incl. compile {warm:.0f} s; same tokens as "
                      f"eager: {c == a})")
        x = torch.randint(3, cfg.vocab_size, (1, args.prefill_len))

        def pre_ours():
            with torch.inference_mode():
                ours(x, last_only=True)

        def pre_ref():
            with torch.inference_mode():
                ref(x, logits_to_keep=1)

        pre_ours(), pre_ref()
        t_ours, t_ref = [], []
        for _ in range(args.repeats):
            t_ours.append(median_time(pre_ours, 1))
            t_ref.append(median_time(pre_ref, 1))
        to, tr = statistics.median(t_ours), statistics.median(t_ref)
        L = args.prefill_len
        print(f"prefill {L}: codelm {L / to:8.1f} tok/s  transformers {L / tr:8.1f} tok/s  ratio {tr / to:5.2f}x")


if __name__ == "__main__":
    main()

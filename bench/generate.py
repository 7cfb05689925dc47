"""Decode and prefill speed, side by side in one process and one run: codelm's engine (fp32, bf16, int8),
transformers' generate, and llama.cpp (llama-cpp-python on codelm's own GGUF export of the same weights).

Greedy, 64-token prompt, 128 new tokens, batch 1 and 8 (llama.cpp: batch 1; its Python API decodes one
sequence); prefill tokens/s on --prefill-len tokens. codelm fp32 and int8 decode with the C step
(codelm/generate/decode_step.c); "fp32 torch" and "int8 torch" are the same formats on the torch path
(EngineConfig(kernel="torch")), bf16 runs on the torch path only. Shapes: llama2.c's 15M (dim 288, 6 layers, 6 heads)
and 110M (dim 768, 12 layers, 12 heads), vocabulary 32,000, random weights.

    .venv/bin/python bench/generate.py [--sizes 15m,110m] [--repeats 3] [--threads 1] [--json FILE]

Every engine is timed in turn inside each repeat (llama.cpp in a subprocess of its own venv, driven over a
pipe, timed by itself), and medians are compared as ratios, so load from other processes falls on every
side alike. llama.cpp comes from bench/engines.py's `ensure("llama-cpp-python")` (a cached venv; see
docs/serving.md); when it is not there the table says why and shows the rest.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engines import ensure  # noqa: E402 - bench/engines.py, beside this file

from codelm import export  # noqa: E402
from codelm.files import write_json  # noqa: E402
from codelm.generate import cpu_kernel  # noqa: E402
from codelm.generate.engine import Engine, Row  # noqa: E402
from codelm.generate.sampler import SamplingParams  # noqa: E402
from codelm.generate.weights import EngineConfig, has_bf16_units  # noqa: E402
from codelm.model.checkpoint import save_hf  # noqa: E402
from codelm.model.config import ModelConfig  # noqa: E402
from codelm.model.llama import Transformer  # noqa: E402
from codelm.tokenizer import Tokenizer, stdlib_sample_texts, train_tokenizer  # noqa: E402

SIZES = {
    "15m": dict(dim=288, n_layers=6, n_heads=6, vocab_size=32000, multiple_of=32, max_seq_len=4096),
    "110m": dict(dim=768, n_layers=12, n_heads=12, vocab_size=32000, multiple_of=256, max_seq_len=4096),
}

# The llama.cpp side: reads one JSON command per line, answers one JSON line (its own timing).
LLAMA_DRIVER = r"""
import json, sys, time
from llama_cpp import Llama
path, threads = sys.argv[1], int(sys.argv[2])
llm = Llama(model_path=path, n_ctx=4096, n_batch=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    llm.reset()
    t0 = time.perf_counter()
    if cmd["new"] == 0:
        llm.eval(cmd["prompt"])
        out = []
    else:
        out = []
        for tok in llm.generate(cmd["prompt"], top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            out.append(tok)
            if len(out) == cmd["new"]:
                break
    print(json.dumps({"seconds": time.perf_counter() - t0, "tokens": out}), flush=True)
"""


class LlamaCpp:
    def __init__(self, python: Path, gguf: Path, threads: int):
        self.proc = subprocess.Popen([str(python), "-c", LLAMA_DRIVER, str(gguf), str(threads)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if "ready" not in json.loads(self.proc.stdout.readline() or '{"failed": 1}'):
            raise RuntimeError(f"llama.cpp could not load {gguf}")

    def run(self, prompt: list[int], new: int) -> tuple[float, list[int]]:
        self.proc.stdin.write(json.dumps({"prompt": prompt, "new": new}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return answer["seconds"], answer["tokens"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def bench_tokenizer(folder: Path):
    """A 32,000-piece byte-level BPE (the GGUF needs a vocabulary; the bench feeds token ids)."""
    if not (folder / "tokenizer.json").exists():
        train_tokenizer(stdlib_sample_texts(6_000_000), 32000, min_frequency=1, show_progress=False).save(folder)
    return Tokenizer.load(folder)


def codelm_runner(model, config: EngineConfig, prompts: list[list[int]], new: int):
    def run() -> tuple[float, list[list[int]]]:
        rows = [Row(p, SamplingParams(max_new_tokens=new), frozenset(), lambda ids: "", new) for p in prompts]
        t0 = time.perf_counter()
        gens = Engine(model, config).run(rows)
        return time.perf_counter() - t0, [g.tokens for g in gens]
    return run


def hf_runner(ref, prompts: list[list[int]], new: int):
    x = torch.tensor(prompts)

    def run():
        t0 = time.perf_counter()
        with torch.inference_mode():
            if new == 0:
                ref(x, logits_to_keep=1)
                return time.perf_counter() - t0, []
            out = ref.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, min_new_tokens=new,
                               do_sample=False, pad_token_id=0)
        return time.perf_counter() - t0, out[:, x.shape[1]:].tolist()
    return run


def llama_runner(llama: LlamaCpp, prompts: list[list[int]], new: int):
    def run():
        seconds, toks = llama.run(prompts[0], new)
        return seconds, [toks]
    return run


def timed(runners: dict, repeats: int) -> dict:
    """Median seconds per engine; the engines take turns within every repeat. Also each engine's tokens."""
    times = {name: [] for name in runners}
    tokens = {}
    for name, run in runners.items():  # warm-up (allocations, weight preparation)
        tokens[name] = run()[1]
    for _ in range(repeats):
        for name, run in runners.items():
            times[name].append(run()[0])
    return {name: statistics.median(t) for name, t in times.items()}, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="15m,110m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--json", help="also write every median and ratio to this JSON file")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "codelm-bench-generate"),
                    help="folder for the tokenizer, HF and GGUF files (reused between runs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    tok = bench_tokenizer(cache / "tokenizer")
    try:
        llama_python, why_not = ensure("llama-cpp-python"), None
    except Exception as e:  # noqa: BLE001 - the engine is optional: say why, bench the rest
        llama_python, why_not = None, str(e).splitlines()[0]
    formats = {"fp32": EngineConfig(max_batch=8), "int8": EngineConfig(quantize="int8", max_batch=8)}
    lib = cpu_kernel.library()
    if lib is not None:  # the same formats on the torch path, beside the C step
        formats.update({"fp32 torch": EngineConfig(max_batch=8, kernel="torch"),
                        "int8 torch": EngineConfig(quantize="int8", max_batch=8, kernel="torch")})
    if has_bf16_units():
        formats["bf16"] = EngineConfig(dtype="bfloat16", max_batch=8)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} thread(s) per engine, "
          f"avx512_bf16: {has_bf16_units()}, C step: {cpu_kernel.describe()}, llama.cpp: {llama_python or 'not available: ' + why_not}")
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    report = {"threads": args.threads, "load_start": os.getloadavg(), "results": []}
    for size in args.sizes.split(","):
        cfg = ModelConfig(**SIZES[size])
        torch.manual_seed(0)
        model = Transformer(cfg).eval()
        folder = cache / size
        save_hf(model, folder)
        tok.save(folder)
        ref = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        llamas = {}
        if llama_python is not None:
            for dtype, label in (("float32", "llama.cpp f32"), ("q8_0", "llama.cpp q8_0")):
                # q8_0 where this checkout's exporter writes it (issue 16's codelm/export.py)
                if dtype in getattr(export, "GGUF_DTYPES", ("float32", "float16")):
                    path = export.export_gguf(model, tok, folder / f"model-{dtype}.gguf", dtype=dtype)
                    llamas[label] = LlamaCpp(llama_python, path, args.threads)
        print(f"\n== {size}: {model.num_params() / 1e6:.1f}M parameters ==")
        print("| batch | engine | tok/s | vs transformers | vs codelm fp32 | vs llama.cpp f32 | vs llama.cpp q8_0 |"
              " greedy tokens equal to codelm fp32 |")
        print("|---|---|---|---|---|---|---|---|")
        gen = torch.Generator().manual_seed(1)
        for bs in [int(b) for b in args.batches.split(",")]:
            prompts = torch.randint(3, cfg.vocab_size, (bs, args.prompt_len), generator=gen).tolist()
            runners = {f"codelm {k}": codelm_runner(model, c, prompts, args.new_tokens) for k, c in formats.items()}
            runners["transformers"] = hf_runner(ref, prompts, args.new_tokens)
            if bs == 1:
                runners.update({k: llama_runner(v, prompts, args.new_tokens) for k, v in llamas.items()})
            med, tokens = timed(runners, args.repeats)
            _table(bs, med, tokens, bs * args.new_tokens)
            report["results"].append({"size": size, "batch": bs, "tok_s": {k: bs * args.new_tokens / t
                                                                           for k, t in med.items()}})
        x = torch.randint(3, cfg.vocab_size, (1, args.prefill_len), generator=gen).tolist()
        runners = {f"codelm {k}": codelm_runner(model, c, x, 1) for k, c in formats.items() if "torch" not in k}
        runners["transformers"] = hf_runner(ref, x, 0)
        runners.update({k: llama_runner(v, x, 0) for k, v in llamas.items()})
        med, _ = timed(runners, args.repeats)
        print(f"\nprefill {args.prefill_len} tokens, tok/s: " + ", ".join(
            f"{k} {args.prefill_len / t:.0f} ({med['transformers'] / t:.2f}x transformers)" for k, t in med.items()))
        report["results"].append({"size": size, "prefill": args.prefill_len,
                                  "tok_s": {k: args.prefill_len / t for k, t in med.items()}})
        for llama in llamas.values():
            llama.close()
    report["load_end"] = os.getloadavg()
    print("load average at end: " + " ".join(f"{x:.2f}" for x in report["load_end"]))
    if args.json:
        write_json(args.json, report)


def _table(bs: int, med: dict, tokens: dict, n_tokens: int) -> None:
    base = tokens["codelm fp32"]
    for name, t in med.items():
        ratios = [f"{med[other] / t:.2f}x" if other in med else "-"
                  for other in ("transformers", "codelm fp32", "llama.cpp f32", "llama.cpp q8_0")]
        same = sum(a == b for row_a, row_b in zip(tokens[name], base) for a, b in zip(row_a, row_b))
        print(f"| {bs} | {name} | {n_tokens / t:.1f} | " + " | ".join(ratios) + f" | {same}/{n_tokens} |")


if __name__ == "__main__":
    main()

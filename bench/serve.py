"""`codelm serve` under load: N concurrent clients x M requests each over loopback HTTP, continuous batching
(--max-batch slots) against the serialized server (one row at a time, what the global lock gave), both
in this process, one after the other, on the same requests. Greedy, so every answer must equal the same
request served alone (checked); throughput (requests/s, tokens/s) and latency p50/p95.

    python bench/serve.py --model DEMO_MODEL_DIR [--clients 16] [--requests 4] [--max-tokens 64] [--max-batch 16]
        [--random-shape 768,12,12]

--random-shape DIM,LAYERS,HEADS serves a Llama of that shape with random weights (seed 0) and the
--model's tokenizer instead of the --model's weights (768,12,12 with the demo's 4,096-token vocabulary:
91M parameters, whose weights do not fit in the CPU's caches, as a real model's do not).
"""
from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.request

import torch

from codelm.evaluate.benchmarks import load_problems
from codelm.generate.weights import EngineConfig, load_for_engine
from codelm.model.config import ModelConfig
from codelm.model.llama import Transformer
from codelm.serve import start_server


def ask(url: str, prompt: str, max_tokens: int) -> tuple[str, int, float]:
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=3600) as r:
        answer = json.loads(r.read())
    return answer["choices"][0]["text"], answer["usage"]["completion_tokens"], time.perf_counter() - t0


def load_run(loaded, engine: EngineConfig, prompts: list[str], clients: int, per_client: int, max_tokens: int):
    server, _ = start_server(loaded.model, loaded.tokenizer, "m", engine=engine)
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}/v1/completions"
    out: dict[int, tuple] = {}

    def client(c: int):
        for j in range(per_client):
            i = c * per_client + j
            out[i] = ask(url, prompts[i % len(prompts)], max_tokens)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    server.shutdown()
    server.server_close()
    return wall, [out[i] for i in sorted(out)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=4, help="per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--random-shape", default=None, metavar="DIM,LAYERS,HEADS")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_for_engine(args.model, EngineConfig())
    if args.random_shape:
        dim, layers, heads = (int(x) for x in args.random_shape.split(","))
        torch.manual_seed(0)
        config = ModelConfig(dim=dim, n_layers=layers, n_heads=heads, vocab_size=loaded.model.config.vocab_size,
                             multiple_of=256, max_seq_len=loaded.model.config.max_seq_len)
        loaded.model = Transformer(config).eval()
        args.model = f"random {args.random_shape} ({sum(p.numel() for p in loaded.model.parameters()) / 1e6:.1f}M " \
                     f"parameters, {args.model}'s tokenizer)"
    prompts = [p["prompt"].strip() for p in load_problems("humaneval", args.data_dir)]
    n = args.clients * args.requests
    runs = {}
    for name, slots in (("serialized (1 row at a time)", 1), (f"continuous batching ({args.max_batch} slots)", args.max_batch)):
        runs[name] = load_run(loaded, EngineConfig(max_batch=slots), prompts, args.clients, args.requests,
                              args.max_tokens)
    (_, alone), (_, together) = runs.values()
    equal = sum(a[0] == b[0] for a, b in zip(alone, together))
    print(f"{args.model}: {args.clients} clients x {args.requests} requests, greedy, max_tokens {args.max_tokens}, "
          f"HumanEval prompts, {args.threads} torch thread(s), loopback HTTP")
    print("| server | wall s | requests/s | tokens/s | latency p50 s | p95 s |")
    print("|---|---|---|---|---|---|")
    for name, (wall, res) in runs.items():
        lat = sorted(r[2] for r in res)
        tokens = sum(r[1] for r in res)
        print(f"| {name} | {wall:.1f} | {n / wall:.2f} | {tokens / wall:.0f} | {statistics.median(lat):.2f} | "
              f"{lat[min(len(lat) - 1, int(0.95 * len(lat)))]:.2f} |")
    walls = [w for w, _ in runs.values()]
    print(f"throughput ratio (continuous / serialized): {walls[0] / walls[1]:.2f}x; answers equal to the request "
          f"served alone: {equal}/{n}")


if __name__ == "__main__":
    main()

"""Run inside the llama-cpp-python venv (not the project's): what llama.cpp makes of a GGUF file.

    python llama_cpp_probe.py REQUEST.json OUT.npz

REQUEST: {"gguf": path, "texts": [...], "prompts": [[ids], ...], "greedy": N}. OUT.npz holds, for text i,
`tokens_i` (llama.cpp's tokenization, no BOS, special tokens not parsed); for prompt j, `logits_j` (every
position's logits) and `greedy_j` (argmax decoding of up to N tokens, ending at EOS, as codelm's complete).
"""
import json
import sys

import numpy as np
from llama_cpp import Llama


def main(request_path: str, out_path: str) -> None:
    req = json.loads(open(request_path).read())
    # An f32 KV cache (type_k/type_v 0 = GGML_TYPE_F32): llama.cpp keeps K and V in f16 by default, which alone
    # moves f32 logits by ~2e-3.
    llm = Llama(model_path=req["gguf"], n_ctx=2048, n_batch=2048, logits_all=True, verbose=False, n_threads=2,
                type_k=0, type_v=0)
    out = {}
    for i, text in enumerate(req["texts"]):
        out[f"tokens_{i}"] = np.array(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False), dtype=np.int64)
    eos = llm.token_eos()
    for j, prompt in enumerate(req["prompts"]):
        llm.reset()
        llm.eval(prompt)
        out[f"logits_{j}"] = np.array(llm.scores[:len(prompt)], dtype=np.float32)
        greedy = []
        for _ in range(req["greedy"]):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if nxt == eos:
                break
            greedy.append(nxt)
            llm.eval([nxt])
        out[f"greedy_{j}"] = np.array(greedy, dtype=np.int64)
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""The small codelm model the interop checks serve: trained once, reused from a cache keyed by its recipe.

    python tests/interop/model.py        # builds it (a few minutes on 2 cores) and prints its folder

A byte-level BPE with the FIM tokens (4,096 pieces), dim 256 x 4 layers, 120 steps on the Python standard
library with FIM (the demo recipe, shortened): far below the uniform loss (ln 4096 = 8.3), so greedy outputs
are code, not one repeated token. Saved by `codelm train` in the HF layout (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json with the chat template). The cache folder is
`engine_root()/../interop-model-<hash of the recipe>`, so a changed recipe trains a new model.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from engines import engine_root  # noqa: E402

STEPS = 120
RECIPE = f"""
[run]
name = "interop"
out_dir = "{{out}}/run"
seed = 0

[model]
preset = "small"
config = {{{{ n_layers = 4, n_heads = 8 }}}}

[tokenizer]
vocab_size = 4096
train_bytes = 8_000_000

[[data.sources]]
path = "{{out}}/corpus"
weight = 1.0
name = "stdlib"

[data]
seq_len = 256
fim_rate = 0.9
fim_spm_rate = 0.5
max_document_chars = 600

[train]
max_steps = {STEPS}
batch_tokens = 2048
micro_batch_size = 8
lr = 2e-3
warmup_steps = 20
final_lr_ratio = 0.0333333
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
eval_every = 60
eval_sequences = 32
checkpoint_every = 40
keep_checkpoints = 1
"""


def model_dir() -> Path:
    key = hashlib.sha256(RECIPE.encode()).hexdigest()[:12]
    return engine_root().parent / f"interop-model-{key}"


def ensure_model(python: str = sys.executable) -> Path:
    """The trained model's folder (HF layout); trains it when missing. Resumes a killed training."""
    out = model_dir()
    final = out / "run" / "final"
    if (out / "READY").is_file():
        return final
    out.mkdir(parents=True, exist_ok=True)
    env_path = str(ROOT)
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "READY").is_file():
            return final
        run = [python, "-c", "import sys; from codelm.cli import main; sys.exit(main())"]
        env = {**os.environ, "PYTHONPATH": env_path}
        if not (out / "corpus" / "train.jsonl").exists():
            subprocess.run([python, "-c", "import sys; from pathlib import Path; from codelm.demo import "
                            "build_demo_corpus; build_demo_corpus(Path(sys.argv[1]), False, True)", str(out)],
                           check=True, env=env)
        recipe = out / "recipe.toml"
        recipe.write_text(RECIPE.format(out=out))
        resume = ["--resume"] if (out / "run").is_dir() else []
        subprocess.run(run + ["train", str(recipe), *resume], check=True, env=env)
        summary = json.loads((out / "run" / "summary.json").read_text()) if (out / "run" / "summary.json").exists() else {}
        (out / "READY").write_text(json.dumps(summary) + "\n")
    return final


if __name__ == "__main__":
    print(ensure_model())

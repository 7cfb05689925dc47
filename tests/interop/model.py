"""The two small codelm models the interop checks serve: trained once, reused from a cache keyed by their recipes.

    python tests/interop/model.py        # builds both (minutes on 2 cores) and prints their folders

- **base**: a byte-level BPE with the FIM tokens (4,096 pieces), dim 256 x 4 layers, BASE_STEPS steps on the
  Python standard library with FIM (the demo recipe, shortened): far below the uniform loss (ln 4096 = 8.3),
  so greedy outputs are code, not one repeated token.
- **instruct**: the base model tuned by codelm's instruct stage (`kind = "instruct"` source, loss on the
  answers only, 6% code rehearsal as in the paper) for INSTRUCT_STEPS steps on dialogs made from the same
  library: each documented top-level function becomes "Write a Python function `name(args)`. {docstring
  summary}" -> the function's source. Deterministic (sorted files, hash split 1 in 20 held out).

Both are saved by `codelm train` in the HF layout (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json with the chat template). The cache folder is
`engine_root()/../interop-model-<hash of the recipes and the dialog builder>`, so a changed recipe trains
new models. Its READY file holds both runs' summaries and the answer loss of both models on the held-out
dialogs (`base_answer_loss`, `instruct_answer_loss`).
"""
from __future__ import annotations

import ast
import fcntl
import hashlib
import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from engines import engine_root  # noqa: E402

from codelm.data.dialogs import CONTROL_TAGS  # noqa: E402  (texts codelm refuses in a dialog)
from codelm.data.instruct import dialog_tokens  # noqa: E402
from codelm.demo import build_demo_corpus  # noqa: E402
from codelm.files import write_jsonl  # noqa: E402
from codelm.model.checkpoint import load  # noqa: E402
from codelm.train.loss import cross_entropy_sum  # noqa: E402

BASE_STEPS = 400
INSTRUCT_STEPS = 100
TRAIN = """
[data]
seq_len = 256
fim_rate = 0.9
fim_spm_rate = 0.5
max_document_chars = 600

[train]
max_steps = {steps}
batch_tokens = 2048
micro_batch_size = 8
lr = {lr}
warmup_steps = {warmup}
final_lr_ratio = 0.0333333
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
eval_every = {eval_every}
eval_sequences = 32
checkpoint_every = 50
keep_checkpoints = 1
log_every = 10
threads = 1  # two threads on two busy cores wait on each other: steps 10x slower
"""
BASE_RECIPE = """
[run]
name = "interop"
out_dir = "{out}/run"
seed = 0

[model]
preset = "small"
config = {{ n_layers = 4, n_heads = 8 }}

[tokenizer]
vocab_size = 4096
train_bytes = 8_000_000

[[data.sources]]
path = "{out}/corpus"
weight = 1.0
name = "stdlib"
""" + TRAIN.format(steps=BASE_STEPS, lr=2e-3, warmup=40, eval_every=100)
INSTRUCT_RECIPE = """
[run]
name = "interop-instruct"
out_dir = "{out}/instruct"
seed = 0

[model]
init_from = "{out}/run/final"

[[data.sources]]
name = "docstrings"
path = "{out}/dialogs"
kind = "instruct"
weight = 0.94

[[data.sources]]
name = "code"
path = "{out}/corpus"
weight = 0.06
""" + TRAIN.format(steps=INSTRUCT_STEPS, lr=1e-3, warmup=10, eval_every=50)


def docstring_dialogs(corpus_jsonl: Path, max_chars: int = 600) -> tuple[list[dict], list[dict]]:
    """(train, valid) instruct dialogs: every documented top-level function of the corpus's files of at most
    `max_chars` characters, asked for by its signature and the first paragraph of its docstring."""
    train, valid = [], []
    for line in corpus_jsonl.read_text().splitlines():
        doc = json.loads(line)
        try:
            tree = ast.parse(doc["text"])
        except SyntaxError:  # files of the library's tests written in other Python versions
            continue
        for node in tree.body:
            summary = ast.get_docstring(node) if isinstance(node, ast.FunctionDef) else None
            source = ast.get_source_segment(doc["text"], node) if summary else None
            if not source or len(source) > max_chars:
                continue
            summary = " ".join(summary.split("\n\n")[0].split())
            user = f"Write a Python function `{node.name}({ast.unparse(node.args)})`. {summary}"
            if any(tag in text for tag in CONTROL_TAGS for text in (user, source)):
                continue
            dialog = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": source}]}
            key = hashlib.sha256(f"{doc['path']}:{node.name}".encode()).digest()[0]
            (valid if key % 20 == 0 else train).append(dialog)
    return train, valid


def model_dir() -> Path:
    recipe = BASE_RECIPE + INSTRUCT_RECIPE + inspect.getsource(docstring_dialogs)
    return engine_root().parent / f"interop-model-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def answer_loss(model_dir: Path, dialogs: list[dict]) -> float:
    """Mean cross-entropy (nats) of a model on the answer tokens (and closing EOS) of the dialogs."""
    loaded = load(model_dir)
    total, count = 0.0, 0
    with torch.no_grad():
        for dialog in dialogs:
            ids, mask = dialog_tokens(loaded.tokenizer, dialog["messages"])
            ids, mask = ids[:256], mask[:256]
            logits = loaded.model(torch.tensor([ids[:-1]]))[0]
            keep = torch.tensor(mask[1:], dtype=torch.float32)  # the answer tokens: the loss training weighs
            total += float(cross_entropy_sum(logits, torch.tensor(ids[1:]), keep))
            count += int(keep.sum())
    return total / max(count, 1)


def _train(out: Path, recipe_text: str, name: str, run_dir: Path) -> dict:
    recipe = out / f"{name}.toml"
    recipe.write_text(recipe_text.format(out=out))
    resume = ["--resume"] if run_dir.is_dir() else []
    cli = [sys.executable, "-c", "import sys; from codelm.cli import main; sys.exit(main())"]
    subprocess.run(cli + ["train", str(recipe), *resume], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads((run_dir / "summary.json").read_text())


def ensure_models() -> tuple[Path, Path]:
    """(base, instruct) model folders (HF layout); trains what is missing, resuming a killed training."""
    out = model_dir()
    base, instruct = out / "run" / "final", out / "instruct" / "final"
    if (out / "READY").is_file():
        return base, instruct
    out.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "READY").is_file():
            return base, instruct
        if not (out / "corpus" / "train.jsonl").exists():
            build_demo_corpus(out, False, True)
        report = {"uniform_loss": math.log(4096), "base": _train(out, BASE_RECIPE, "base", out / "run")}
        train, valid = docstring_dialogs(out / "corpus" / "train.jsonl")
        (out / "dialogs").mkdir(exist_ok=True)
        write_jsonl(out / "dialogs" / "train.jsonl", train)
        write_jsonl(out / "dialogs" / "valid.jsonl", valid)
        report["dialogs"] = {"train": len(train), "valid": len(valid)}
        report["instruct"] = _train(out, INSTRUCT_RECIPE, "instruct", out / "instruct")
        report["base_answer_loss"] = answer_loss(base, valid)
        report["instruct_answer_loss"] = answer_loss(instruct, valid)
        (out / "READY").write_text(json.dumps(report, indent=1) + "\n")
    return base, instruct


def report() -> dict:
    """What READY recorded about the models' training (ensure_models() first)."""
    return json.loads((model_dir() / "READY").read_text())


if __name__ == "__main__":
    print(*ensure_models(), sep="\n")

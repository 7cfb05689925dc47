"""The same loop under torchrun with FSDP2 (gloo on CPU): same losses as one process, portable checkpoints."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from codelm.data.corpus import stdlib_dir
from codelm.train.state import list_checkpoints, read_metrics
from tests.helpers import make_tiny_bpe

REPO = Path(__file__).resolve().parents[1]
# Two processes reduce the same numbers in a different order (gloo all-reduce, sharded
# clip-norm): fp32 rounding, not a different trajectory. Measured differences are ~1e-7.
TOLERANCE = 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    texts = [f.read_text(encoding="utf-8") for f in sorted(stdlib_dir().glob("*.py"))[:40]]
    (d / "corpus").mkdir()
    (d / "corpus" / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:-4]))
    (d / "corpus" / "valid.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[-4:]))
    make_tiny_bpe(vocab_size=512).save(d / "tok")
    recipe = d / "r.toml"
    recipe.write_text(f"""
[run]
seed = 5
[model]
preset = "tiny"
[tokenizer]
path = "{d / 'tok'}"
[[data.sources]]
path = "{d / 'corpus'}"
name = "code"
[data]
seq_len = 64
max_document_chars = 300
[train]
max_steps = 8
batch_tokens = 1024
micro_batch_size = 4
lr = 3e-3
warmup_steps = 2
eval_every = 4
eval_sequences = 8
checkpoint_every = 4
keep_checkpoints = 3
""")
    return d, recipe


def _run(recipe, out, nproc, *extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    if nproc == 1:
        cmd = [sys.executable, "-m", "codelm.cli", "train", str(recipe)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(_free_port()), "-m", "codelm.cli", "train", str(recipe)]
    r = subprocess.run(cmd + [f"--set=run.out_dir=\"{out}\"", *extra], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _curve(out):
    rows = read_metrics(Path(out) / "metrics.jsonl")
    return [(r["step"], r.get("loss", r.get("valid_loss")), "loss" in r) for r in rows]


def _same(a, b):
    assert [(s, k) for s, _, k in a] == [(s, k) for s, _, k in b]
    for (s, x, _), (_, y, _) in zip(a, b):
        assert abs(x - y) <= TOLERANCE, (s, x, y)


@pytest.mark.slow
def test_two_processes_match_one(setup):
    d, recipe = setup
    _run(recipe, d / "one", 1, "--set=train.threads=1")
    r = _run(recipe, d / "two", 2)
    assert "2 process(es)" in r.stdout + r.stderr
    one, two = _curve(d / "one"), _curve(d / "two")
    assert len(one) == 8 + 2
    _same(one, two)
    # The sharded run's checkpoint holds full tensors: one process resumes it and finishes the same way.
    ckpts = list_checkpoints(d / "two")
    assert [c.name for c in ckpts] == ["step-0000004", "step-0000008"]
    import shutil

    shutil.copytree(d / "two", d / "two-then-one")
    shutil.rmtree(d / "two-then-one" / "checkpoints" / "step-0000008")
    shutil.rmtree(d / "two-then-one" / "final")
    _run(recipe, d / "two-then-one", 1, "--resume", "--set=train.threads=1")
    _same(one, _curve(d / "two-then-one"))

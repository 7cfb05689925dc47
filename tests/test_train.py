"""The training loop: recipes, schedule, learning, exact resume, checkpoints, and bad input."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import codelm
from codelm.cli import main as cli_main
from codelm.errors import CheckpointError, ConfigError, DataError
from codelm.train.recipe import RECIPES_DIR
from codelm.train.loop import learning_rate, train
from codelm.train.recipe import load_recipe, recipe_from_dict
from codelm.train.state import list_checkpoints, read_metrics
from codelm.data.corpus import stdlib_dir
from tests.helpers import make_tiny_bpe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A corpus folder of real code: standard-library modules, split by file."""
    d = tmp_path_factory.mktemp("corpus")
    files = sorted(stdlib_dir().glob("*.py"))
    texts = [f.read_text(encoding="utf-8") for f in files[:70]]
    with open(d / "train.jsonl", "w") as f:
        for t in texts[:-6]:
            f.write(json.dumps({"text": t}) + "\n")
    with open(d / "valid.jsonl", "w") as f:
        for t in texts[-6:]:
            f.write(json.dumps({"text": t}) + "\n")
    return d


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    make_tiny_bpe(vocab_size=512).save(d)
    return d


def _recipe(out, corpus, tokenizer_dir=None, **sections):
    raw = {
        "run": {"out_dir": str(out), "seed": 3},
        "model": {"preset": "tiny"},
        "tokenizer": {"path": str(tokenizer_dir)} if tokenizer_dir else {"vocab_size": 400, "train_bytes": 400_000},
        "data": {"sources": [{"path": str(corpus), "name": "code"}], "seq_len": 64, "max_document_chars": 300},
        "train": {"max_steps": 12, "batch_tokens": 512, "micro_batch_size": 4, "lr": 3e-3, "warmup_steps": 3,
                  "eval_every": 4, "eval_sequences": 8, "checkpoint_every": 4, "keep_checkpoints": 5},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return recipe_from_dict(raw, "test-recipe")


def _losses(run_dir):
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    return ([(r["step"], r["loss"]) for r in rows if "loss" in r],
            [(r["step"], r["valid_loss"]) for r in rows if "valid_loss" in r])


def _assert_same_curves(a, b, tol=1e-5):
    (ta, va), (tb, vb) = _losses(a), _losses(b)
    assert [s for s, _ in ta] == [s for s, _ in tb] and [s for s, _ in va] == [s for s, _ in vb]
    for (s, x), (_, y) in zip(ta + va, tb + vb):
        assert abs(x - y) <= tol, (s, x, y)


# --------------------------------------------------------------------- recipes
def test_recipe_unknown_key_wrong_type_and_other_mistakes(tmp_path, corpus):
    good = (RECIPES_DIR / "demo.toml").read_text()
    p = tmp_path / "r.toml"
    p.write_text(good.replace("warmup_steps = 100", "warmup_steps = 100\nwarmup_stpes = 5"))
    with pytest.raises(ConfigError, match=r"r\.toml: unknown key 'train\.warmup_stpes'"):
        load_recipe(p)
    p.write_text(good.replace("max_steps = 1200", 'max_steps = "1200"'))
    with pytest.raises(ConfigError, match=r"r\.toml: train\.max_steps must be an integer, got string '1200'"):
        load_recipe(p)
    p.write_text(good + "\n[trian]\nx = 1\n")
    with pytest.raises(ConfigError, match="unknown section.*'trian'"):
        load_recipe(p)
    p.write_text(good.replace("path = \"runs/demo/corpus\"", "path = 3"))
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.path must be a string"):
        load_recipe(p)
    p.write_text("[run\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(p)
    with pytest.raises(ConfigError, match="unknown key 'train.nope'"):
        load_recipe(RECIPES_DIR / "demo.toml", ["train.nope=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_recipe(RECIPES_DIR / "demo.toml", ["train.max_steps"])
    with pytest.raises(ConfigError, match="multiple of data.seq_len"):
        load_recipe(RECIPES_DIR / "demo.toml", ["train.batch_tokens=1000"])
    with pytest.raises(ConfigError, match="exactly one of model.preset and model.init_from"):
        load_recipe(RECIPES_DIR / "demo.toml", ["model.init_from=\"x\""])
    with pytest.raises(ConfigError, match="'model.config.dimm'"):
        load_recipe(RECIPES_DIR / "demo.toml", ["model.config={dimm=3}"])
    with pytest.raises(ConfigError, match="data.sources is empty"):
        load_recipe(RECIPES_DIR / "demo.toml", ["data.sources=[]"])
    # Overrides: TOML values, or plain strings when not TOML.
    r = load_recipe(RECIPES_DIR / "demo.toml", ["train.max_steps=7", "run.name=abc", "train.lr=1e-3"])
    assert (r.train.max_steps, r.run.name, r.train.lr) == (7, "abc", 1e-3)


def test_shipped_recipes_parse():
    for p in sorted(RECIPES_DIR.glob("*.toml")):
        r = load_recipe(p)
        assert r.train.max_steps > 0
    r = load_recipe(RECIPES_DIR / "codellama-7b.toml")
    t = r.train
    assert (t.beta1, t.beta2, t.warmup_steps, t.lr) == (0.9, 0.95, 1000, 3e-4)
    assert abs(t.final_lr_ratio - 1 / 30) < 1e-6
    assert t.batch_tokens == 4 * 1024 * 1024 and r.data.seq_len == 4096
    assert r.data.fim_rate == 0.9 and r.data.fim_spm_rate == 0.5


def test_cli_reports_bad_recipes_in_one_line(tmp_path, capsys):
    p = tmp_path / "bad.toml"
    p.write_text("[train]\nmax_steps = 'ten'\n")
    assert cli_main(["train", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.toml" in err and "train.max_steps" in err


def test_learning_rate_schedule():
    peak, warm, total = 3e-4, 10, 110
    lrs = [learning_rate(s, peak, warm, total, 1 / 30) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / warm) and lrs[warm - 1] == pytest.approx(peak)
    assert all(a < b for a, b in zip(lrs[:warm], lrs[1:warm]))
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1:]))
    assert learning_rate(total, peak, warm, total, 1 / 30) == pytest.approx(peak / 30)
    assert lrs[warm + 50] == pytest.approx(peak / 30 + (peak - peak / 30) * 0.5)   # half-way down the cosine


# -------------------------------------------------------------------- learning
def test_loss_goes_down_on_real_code(tmp_path, corpus):
    r = _recipe(tmp_path / "run", corpus, train={"max_steps": 40, "eval_every": 10, "checkpoint_every": 20})
    result = train(r, show_progress=False)
    train_losses, valid_losses = _losses(result.run_dir)
    first = sum(x for _, x in train_losses[:5]) / 5
    last = sum(x for _, x in train_losses[-5:]) / 5
    assert first > math.log(400) - 0.3          # starts near uniform guessing over 400 tokens
    assert last < first - 1.0, (first, last)
    assert valid_losses[-1][1] < valid_losses[0][1] - 0.3, valid_losses
    assert result.valid_loss == valid_losses[-1][1]
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"} <= set(rows[0])
    # The tokenizer was trained on the corpus, with the infilling tokens, and travels with the model.
    loaded = codelm.load(result.final_dir)
    assert loaded.tokenizer.vocab_size == 400 and loaded.tokenizer.has_infilling
    assert loaded.config.vocab_size == 400
    from codelm.generate import complete, infill

    assert isinstance(complete(loaded.model, loaded.tokenizer, "def f(x):\n", max_new_tokens=5), str)
    assert isinstance(infill(loaded.model, loaded.tokenizer, "def f(", "):\n", max_new_tokens=5), str)
    ckpts = list_checkpoints(result.run_dir)
    assert [c.name for c in ckpts] == ["step-0000020", "step-0000040"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "trainer_state.pt", "optimizer.pt"} <= \
        {p.name for p in ckpts[0].iterdir()}


def test_gradient_accumulation_matches_one_big_batch(tmp_path, corpus, tokenizer_dir):
    a = train(_recipe(tmp_path / "a", corpus, tokenizer_dir, train={"max_steps": 4, "micro_batch_size": 8}),
              show_progress=False)
    b = train(_recipe(tmp_path / "b", corpus, tokenizer_dir, train={"max_steps": 4, "micro_batch_size": 2}),
              show_progress=False)
    _assert_same_curves(a.run_dir, b.run_dir, tol=2e-5)


def test_activation_checkpointing_changes_nothing(tmp_path, corpus, tokenizer_dir):
    a = train(_recipe(tmp_path / "a", corpus, tokenizer_dir, train={"max_steps": 3}), show_progress=False)
    b = train(_recipe(tmp_path / "b", corpus, tokenizer_dir, train={"max_steps": 3, "activation_checkpointing": True}),
              show_progress=False)
    _assert_same_curves(a.run_dir, b.run_dir, tol=1e-6)


# ---------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, corpus, tokenizer_dir):
    out = tmp_path_factory.mktemp("straight") / "run"
    return train(_recipe(out, corpus, tokenizer_dir), show_progress=False)


def test_stop_and_resume_repeats_the_run_exactly(tmp_path, corpus, tokenizer_dir, straight_run):
    out = tmp_path / "run"
    first = train(_recipe(out, corpus, tokenizer_dir, train={"stop_at_step": 6}), show_progress=False)
    assert first.final_dir is None and first.steps == 6
    assert [c.name for c in list_checkpoints(out)] == ["step-0000004", "step-0000006"]
    with pytest.raises(ConfigError, match="--resume"):
        train(_recipe(out, corpus, tokenizer_dir), show_progress=False)
    second = train(_recipe(out, corpus, tokenizer_dir), resume=True, show_progress=False)
    assert second.steps == 12
    _assert_same_curves(straight_run.run_dir, out)
    a = codelm.load(straight_run.final_dir).model.state_dict()
    b = codelm.load(second.final_dir).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_killed_run_resumes_exactly(tmp_path, corpus, tokenizer_dir, straight_run):
    """SIGKILL a real `codelm train` right after its first checkpoint, then --resume."""
    out = tmp_path / "run"
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""
[run]
out_dir = "{out}"
seed = 3
[model]
preset = "tiny"
[tokenizer]
path = "{tokenizer_dir}"
[[data.sources]]
path = "{corpus}"
name = "code"
[data]
seq_len = 64
max_document_chars = 300
[train]
max_steps = 12
batch_tokens = 512
micro_batch_size = 4
lr = 3e-3
warmup_steps = 3
eval_every = 4
eval_sequences = 8
checkpoint_every = 4
keep_checkpoints = 5
""")
    # Killed as soon as its first checkpoint is complete: the metrics log then usually holds steps
    # past it, which --resume must drop and repeat.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "codelm.cli", "train", str(recipe)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while not (out / "checkpoints" / "step-0000004" / "trainer_state.pt").exists():
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.time() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    newest = list_checkpoints(out)[-1].name
    if proc.returncode == 0:
        pytest.skip("the run finished before the kill landed (machine too fast for this test)")
    assert proc.returncode == -signal.SIGKILL
    assert newest in {"step-0000004", "step-0000008"}
    assert cli_main(["train", str(recipe), "--resume"]) == 0
    _assert_same_curves(straight_run.run_dir, out)


# ------------------------------------------------------------------ bad input
def test_resuming_with_another_architecture_is_one_clear_error(tmp_path, corpus, tokenizer_dir):
    out = tmp_path / "run"
    train(_recipe(out, corpus, tokenizer_dir, train={"max_steps": 2, "checkpoint_every": 2}), show_progress=False)
    other = _recipe(out, corpus, tokenizer_dir, model={"config": {"n_layers": 3}}, train={"max_steps": 4})
    with pytest.raises(CheckpointError, match=r"step-0000002: checkpoint architecture \(.*n_layers=2.*\) differs "
                                              r"from the recipe's \(.*n_layers=3"):
        train(other, resume=True, show_progress=False)


def test_continuing_from_a_checkpoint_and_extending_the_vocabulary(tmp_path, corpus, tokenizer_dir):
    from codelm.model.checkpoint import save_hf
    from codelm.model.config import ModelConfig
    from codelm.model.llama import Transformer

    torch.manual_seed(0)
    base = Transformer(ModelConfig.from_preset("tiny", vocab_size=500))
    save_hf(base, tmp_path / "base")                 # a "Llama 2" without the tokenizer's last 12 tokens
    r = _recipe(tmp_path / "run", corpus, tokenizer_dir, model={"preset": None, "init_from": str(tmp_path / "base")},
                train={"max_steps": 2, "checkpoint_every": 0})
    with pytest.raises(CheckpointError, match="500 embeddings but the tokenizer 512 tokens.*extend_vocab"):
        train(r, show_progress=False)
    r = _recipe(tmp_path / "run", corpus, tokenizer_dir,
                model={"preset": None, "init_from": str(tmp_path / "base"), "extend_vocab": True},
                train={"max_steps": 2, "checkpoint_every": 0, "lr": 1e-9, "warmup_steps": 0})
    result = train(r, show_progress=False)
    grown = codelm.load(result.final_dir).model
    assert grown.config.vocab_size == 512
    # With a negligible learning rate the old rows are (almost) the base model's, the new ones their mean.
    old = base.tok_embeddings.weight
    assert torch.allclose(grown.tok_embeddings.weight[:500], old, atol=1e-5)
    assert torch.allclose(grown.tok_embeddings.weight[500:], old.mean(0, keepdim=True).expand(12, -1), atol=1e-5)
    # Architecture changes are refused for a checkpoint; RoPE base changes (long-context) are allowed.
    with pytest.raises(ConfigError, match="model.config.dim cannot be changed"):
        _recipe(tmp_path / "x", corpus, tokenizer_dir, model={"preset": None, "init_from": "b", "config": {"dim": 8}})
    _recipe(tmp_path / "x", corpus, tokenizer_dir, model={"preset": None, "init_from": "b",
                                                          "config": {"rope_theta": 1e6}})


def test_empty_or_missing_corpus_is_one_clear_error(tmp_path, tokenizer_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.jsonl").write_text("")
    with pytest.raises(DataError, match="no documents"):
        train(_recipe(tmp_path / "r1", empty, tokenizer_dir), show_progress=False)
    with pytest.raises(DataError, match="does not exist"):
        train(_recipe(tmp_path / "r2", tmp_path / "nowhere", tokenizer_dir), show_progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"text": "x = 1"}\n{"txt": 2}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: expected an object with a string \"text\" field"):
        train(_recipe(tmp_path / "r3", bad, tokenizer_dir), show_progress=False)


# ------------------------------------------------------------------ infilling
OPS = [("Add", "+"), ("Subtract", "-"), ("Multiply", "*"), ("Divide", "/")]
NAMES = ["alpha", "bravo", "carol", "delta", "eagle", "fable", "gamma", "hotel", "india", "joker", "kilo", "lima",
         "mango", "nylon", "oscar", "papa", "quest", "romeo", "sierra", "tango", "umbra", "victor", "whisky",
         "xray", "yankee", "zulu", "amber", "basil", "cedar", "dover"]


def _function(name, op):
    verb, sym = OPS[op]
    return f'def {name}(a, b):\n    """{verb} a and b."""\n    return a {sym} b\n'


@pytest.mark.slow
def test_fim_training_on_a_repetitive_corpus_infills_held_out_instances(tmp_path):
    """300 steps on 90 (name, operation) functions; infill functions of the 30 pairs never seen."""
    import random

    from codelm.generate import infill_batch

    held_out = [(n, i % 4) for i, n in enumerate(NAMES)]
    seen = [(n, o) for n in NAMES for o in range(4) if (n, o) not in held_out]
    rng = random.Random(0)
    (tmp_path / "corpus").mkdir()
    with open(tmp_path / "corpus" / "train.jsonl", "w") as f:
        for _ in range(4000):
            f.write(json.dumps({"text": _function(*rng.choice(seen))}) + "\n")
    r = recipe_from_dict({
        "run": {"out_dir": str(tmp_path / "run"), "seed": 0},
        "model": {"preset": "tiny", "config": {"dim": 128, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4}},
        "tokenizer": {"vocab_size": 300},
        "data": {"sources": [{"path": str(tmp_path / "corpus")}], "seq_len": 64},
        "train": {"max_steps": 300, "batch_tokens": 1024, "micro_batch_size": 16, "lr": 5e-3, "warmup_steps": 20,
                  "eval_every": 0, "checkpoint_every": 0}}, "infill-test")
    m = codelm.load(train(r, show_progress=False).final_dir)
    cases = held_out[:12]
    # The body from the docstring (what the prefix says), and the docstring's verb from the body
    # (what the suffix says): the answer is in one side of the hole only.
    bodies = [(f'def {n}(a, b):\n    """{OPS[o][0]} a and b."""', "\n") for n, o in cases]
    verbs = [(f'def {n}(a, b):\n    """', f' a and b."""\n    return a {OPS[o][1]} b\n') for n, o in cases]
    got_bodies = [g.text for g in infill_batch(m.model, m.tokenizer, bodies, spm=True, max_new_tokens=12)]
    got_verbs = [g.text for g in infill_batch(m.model, m.tokenizer, verbs, spm=True, max_new_tokens=12)]
    right_bodies = sum(g == f"\n    return a {OPS[o][1]} b" for g, (_, o) in zip(got_bodies, cases))
    right_verbs = sum(g == OPS[o][0] for g, (_, o) in zip(got_verbs, cases))
    assert right_bodies >= 6 and right_verbs >= 6, (got_bodies, got_verbs)


def test_loss_weight_through_the_loop(tmp_path, corpus, tokenizer_dir):
    """The same loss_weight on every source is the plain token mean again (the weighted path, same curves);
    a weighted prompt/completion source changes the training loss, which is then the weighted mean."""
    plain = train(_recipe(tmp_path / "a", corpus, tokenizer_dir, train={"max_steps": 4}), show_progress=False)
    uniform = train(_recipe(tmp_path / "b", corpus, tokenizer_dir, train={"max_steps": 4},
                            data={"sources": [{"path": str(corpus), "name": "code", "loss_weight": 3.0}]}),
                    show_progress=False)
    _assert_same_curves(plain.run_dir, uniform.run_dir, tol=1e-5)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"x = {i}\nassert x == ", "completion": f"{i}\n"}) + "\n"
                             for i in range(200)))
    runs = []
    for w in (1.0, 50.0):
        sources = [{"path": str(corpus), "name": "code"},
                   {"path": str(pairs), "name": "pairs", "kind": "instruct", "loss_weight": w}]
        runs.append(train(_recipe(tmp_path / f"w{w}", corpus, tokenizer_dir, train={"max_steps": 4},
                                  data={"sources": sources}), show_progress=False))
    first = [_losses(r.run_dir)[0][0][1] for r in runs]
    assert all(math.isfinite(x) for x in first) and abs(first[0] - first[1]) > 1e-3


def test_a_wheel_ships_the_recipes(tmp_path):
    """A non-editable install (a wheel) carries the recipes inside the package, where find_recipe looks."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(REPO / "codelm", src / "codelm", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("codelm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"codelm/recipes/{p.name}" for p in RECIPES_DIR.glob("*.toml")}
    assert "codelm/recipes/demo.toml" in shipped and shipped <= names
    assert "codelm/evaluate/zygote.py" in names and "codelm/benchdata/multipl_e_sha256.json" in names

"""Bad input to every command: one line on stderr, exit code 2, no traceback, and nothing of the user's
replaced. Also the output rule (files.claim_output), the umask of written files, the escapes of CLI
strings and the context limit of local generation."""
from __future__ import annotations

import contextlib
import io
import json
import os
import stat
from pathlib import Path

import pytest
from helpers import make_tiny_bpe, tiny_llama

from codelm.cli import main, unescape
from codelm.files import OutputError, atomic_write, claim_output, mark_output
from codelm.model.checkpoint import save_hf, save_meta

DATA = Path(os.environ.get("CODELM_DATA_DIR", Path(__file__).resolve().parent.parent.parent / "shared" / "data"))


def run(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A folder with a tiny model, user files, and checkpoints whose config.json has bad fields."""
    root = tmp_path_factory.mktemp("cli-errors")
    tok = make_tiny_bpe()
    save_hf(tiny_llama(tok.vocab_size), root / "m", tokenizer=tok)
    for name, change in {"str-hidden": {"hidden_size": "64"}, "zero-heads": {"num_attention_heads": 0},
                         "zero-kv": {"num_key_value_heads": 0}, "neg-eps": {"rms_norm_eps": -1},
                         "list-cfg": None}.items():
        d = root / name
        save_hf(tiny_llama(tok.vocab_size), d, tokenizer=tok)
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps([1] if change is None else {**cfg, **change}))
    for name, change in {"meta-str-dim": {"dim": "64"}, "meta-zero-layers": {"n_layers": 0}}.items():
        d = root / name
        save_meta(tiny_llama(tok.vocab_size), d, tokenizer=tok)
        (d / "params.json").write_text(json.dumps({**json.loads((d / "params.json").read_text()), **change}))
    (root / "user").mkdir()
    (root / "user" / "mine.txt").write_text("mine\n")
    (root / "mine.gguf").write_text("not codelm's\n")
    (root / "notes.jsonl").write_text("my notes\n")
    (root / "s.jsonl").write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return False\n"}) + "\n")
    (root / "nofill.py").write_text("def f():\n    pass\n")
    (root / "recipe.toml").write_text("[run]\nname = 'x'\nbogus = 1\n")
    return root


def _user_files(root: Path) -> dict:
    return {p: p.read_bytes() for p in [root / "user" / "mine.txt", root / "mine.gguf", root / "notes.jsonl",
                                        root / "s.jsonl"]}


M = "m"
BAD = [
    # complete / infill: sampling flags, checkpoints, prompt files
    ("complete", ["complete", "--model", M, "--temperature", "-1", "x"], "--temperature"),
    ("complete", ["complete", "--model", M, "--top-p", "2", "x"], "--top-p"),
    ("complete", ["complete", "--model", M, "--top-p", "0", "x"], "--top-p"),
    ("complete", ["complete", "--model", M, "--top-p", "nan", "x"], "--top-p"),
    ("complete", ["complete", "--model", M, "--max-new-tokens", "-3", "x"], "--max-new-tokens"),
    ("complete", ["complete", "--model", M, "--top-k", "-1", "x"], "--top-k"),
    ("complete", ["complete", "--model", M, "--seed", "x", "x"], "--seed"),
    ("complete", ["complete", "--model", "str-hidden", "x"], "hidden_size"),
    ("complete", ["complete", "--model", "zero-heads", "x"], "num_attention_heads"),
    ("complete", ["complete", "--model", "zero-kv", "x"], "num_key_value_heads"),
    ("complete", ["complete", "--model", "neg-eps", "x"], "rms_norm_eps"),
    ("complete", ["complete", "--model", "list-cfg", "x"], "JSON object"),
    ("complete", ["complete", "--model", "meta-str-dim", "x"], "dim"),
    ("complete", ["complete", "--model", "meta-zero-layers", "x"], "n_layers"),
    ("complete", ["complete", "--model", "nowhere", "x"], "nowhere"),
    ("complete", ["complete", "--model", M, "@missing.py"], "missing.py"),
    ("complete", ["complete", "--model", M, "--bogus", "x"], "--bogus"),
    ("infill", ["infill", "--model", M, "--file", "nofill.py"], "<FILL>"),
    ("infill", ["infill", "--model", M], "--prefix"),
    ("infill", ["infill", "--model", M, "--prefix", "a", "--top-p", "-0.5"], "--top-p"),
    # score: outputs and flags
    ("score", ["score", "--benchmark", "humaneval", "--samples", "s.jsonl", "--out", "s.jsonl"], "input"),
    ("score", ["score", "--benchmark", "humaneval", "--samples", "s.jsonl", "--out", "s.jsonl", "--force"], "input"),
    ("score", ["score", "--benchmark", "humaneval", "--samples", "s.jsonl", "--out", "user"], "folder"),
    ("score", ["score", "--benchmark", "humaneval", "--samples", "s.jsonl", "--out", "notes.jsonl"], "--force"),
    ("score", ["score", "--benchmark", "humaneval", "--samples", "s.jsonl", "--workers", "0"], "--workers"),
    ("score", ["score", "--benchmark", "humaneval", "--samples", "s.jsonl", "--timeout", "-1"], "--timeout"),
    ("score", ["score", "--benchmark", "nope", "--samples", "s.jsonl"], "nope"),
    # eval
    ("eval", ["eval", "--benchmark", "humaneval", "--model", M, "--out", "notes.jsonl"], "not a folder"),
    ("eval", ["eval", "--benchmark", "humaneval", "--model", M, "--out", "user"], "--force"),
    ("eval", ["eval", "--benchmark", "humaneval", "--model", M, "--n", "0"], "--n"),
    ("eval", ["eval", "--benchmark", "humaneval", "--model", M, "--limit", "0"], "--limit"),
    ("eval", ["eval", "--benchmark", "humaneval", "--model", M, "--top-p", "1.5"], "--top-p"),
    ("eval", ["eval", "--benchmark", "humaneval", "--model", M, "--max-new-tokens", "-1"], "--max-new-tokens"),
    # export / convert: never replace what codelm did not write, never the input
    ("export", ["export", "--format", "hf", M, "user"], "user"),
    ("export", ["export", "--format", "hf", M, "mine.gguf"], "mine.gguf"),
    ("export", ["export", "--format", "gguf", M, "mine.gguf"], "mine.gguf"),
    ("export", ["export", "--format", "hf", M, M], "input"),
    ("export", ["export", "--format", "hf", M, M, "--force"], "input"),
    ("export", ["export", "--format", "xx", M, "out"], "--format"),
    ("convert", [ "convert", M, M], "input"),
    ("convert", ["convert", M, "user"], "user"),
    ("convert", ["convert", M, "conv", "--max-shard-size", "lots"], "lots"),
    # serve, chat
    ("serve", ["serve", "--model", M, "--port", "70000"], "--port"),
    ("serve", ["serve", "--model", M, "--max-body-bytes", "0"], "--max-body-bytes"),
    ("serve", ["serve", "--model", "zero-heads"], "num_attention_heads"),
    ("chat", ["chat", "--model", M, "--top-p", "0"], "--top-p"),
    ("chat", ["chat", "--model", M, "--max-new-tokens", "0"], "--max-new-tokens"),
    # train, corpus, demo, lab, selfinstruct, report, info
    ("train", ["train", "missing.toml"], "missing.toml"),
    ("train", ["train", "recipe.toml"], "bogus"),
    ("corpus", ["corpus", "--out", "notes.jsonl"], "not a folder"),
    ("corpus", ["corpus", "--out", "user"], "--force"),
    ("corpus", ["corpus", "--out", "c", "--valid-fraction", "2"], "--valid-fraction"),
    ("demo", ["demo", "--out", "user"], "--force"),
    ("lab", ["lab", "length", "--out", "user"], "--force"),
    ("lab", ["lab", "length", "--seeds", "0"], "--seeds"),
    ("selfinstruct", ["selfinstruct", "--out", "user", "--model", M], "--force"),
    ("selfinstruct", ["selfinstruct", "--out", "si", "--tests", "0"], "--tests"),
    ("report", ["report", "no-such-run"], "no-such-run"),
    ("info", ["info", "--preset", "nope"], "nope"),
    ("info", ["info", "--model", "zero-heads"], "num_attention_heads"),
]


@pytest.mark.parametrize("command, argv, names", BAD, ids=[f"{c}:{' '.join(a[1:])[:60]}" for c, a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_nothing_replaced(place, monkeypatch, command, argv, names):
    monkeypatch.chdir(place)
    monkeypatch.setenv("CODELM_DATA_DIR", str(DATA))
    before = _user_files(place)
    rc, _, err = run(argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"codelm {command}") and ": error: " in lines[0], err
    assert names in lines[0], err
    assert _user_files(place) == before
    assert not (place / "user").joinpath("config.json").exists()


# ----------------------------------------------------------------------------- the output rule
def test_claim_output_allows_new_empty_and_own_outputs_and_refuses_the_rest(tmp_path):
    f = tmp_path / "r.jsonl"
    assert claim_output(f, "score-results", folder=False) == f  # new
    atomic_write(f, "x\n")
    with pytest.raises(OutputError, match="codelm did not write it"):
        claim_output(f, "score-results", folder=False)
    mark_output(f, "score-results")
    claim_output(f, "score-results", folder=False)  # codelm's own, unchanged
    with pytest.raises(OutputError):
        claim_output(f, "other-kind", folder=False)  # of another kind
    f.write_text("edited by hand\n")
    with pytest.raises(OutputError):
        claim_output(f, "score-results", folder=False)  # changed since: the user's now
    claim_output(f, "score-results", folder=False, force=True)
    d = tmp_path / "d"
    d.mkdir()
    claim_output(d, "eval-run", folder=True)  # empty
    (d / "x").write_text("x")
    with pytest.raises(OutputError, match="--force"):
        claim_output(d, "eval-run", folder=True)
    mark_output(d, "eval-run")
    claim_output(d, "eval-run", folder=True)
    with pytest.raises(OutputError, match="input"):
        claim_output(d, "eval-run", folder=True, force=True, inputs=[d / "x"])  # an input inside it


def test_written_files_have_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    os.umask(old)
    f = tmp_path / "a.json"
    atomic_write(f, "{}\n")
    tok = make_tiny_bpe()
    save_hf(tiny_llama(tok.vocab_size), tmp_path / "ckpt", tokenizer=tok)
    want = 0o666 & ~old
    assert stat.S_IMODE(f.stat().st_mode) == want
    for p in (tmp_path / "ckpt").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == want, p
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o777 & ~old


def test_codelm_outputs_are_replaced_and_user_files_only_with_force(place, monkeypatch, tmp_path):
    monkeypatch.chdir(place)
    for _ in range(2):  # the second run replaces codelm's own earlier export
        assert run(["export", "--format", "hf", M, tmp_path / "hf"])[0] == 0
        assert run(["export", "--format", "gguf", M, tmp_path / "m.gguf"])[0] == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    assert run(["export", "--format", "hf", M, victim])[0] == 2
    assert (victim / "keep.txt").read_text() == "keep"
    assert run(["export", "--format", "hf", M, victim, "--force"])[0] == 0
    assert (victim / "config.json").exists() and not (victim / "keep.txt").exists()


# ----------------------------------------------------------------------------- strings and lengths
def test_cli_strings_read_the_escapes_people_type():
    assert unescape(r"\ndef ") == "\ndef "
    assert unescape(r"a\tb\\n\x") == "a\tb\\n\\x"
    from codelm.cli import _sampling, build_parser

    args = build_parser().parse_args(["complete", "--model", "m", "--stop", r"\ndef ", "--stop", "@x", r"a\tb"])
    assert _sampling(args)["stop"] == ["\ndef ", "@x"] and args.prompt == "a\tb"
    args = build_parser().parse_args(["infill", "--model", "m", "--prefix", r"def f(x):\n    ", "--suffix", "@s.py"])
    assert (args.prefix, args.suffix) == ("def f(x):\n    ", "@s.py")


def test_max_new_tokens_beyond_the_context_is_cut_with_a_warning(place, monkeypatch):
    monkeypatch.chdir(place)
    rc, out, err = run(["complete", "--model", M, "--max-new-tokens", "100000", "--no-stream", "def f"])
    assert rc == 0 and "maximum context length of 512" in err and "warning" in err
    assert "Traceback" not in err
    n = int(err.split("[")[-1].split(" tokens")[0])
    assert n <= 512


def test_a_decoding_step_attends_over_the_written_tokens_whatever_the_requested_maximum(monkeypatch):
    """A step attends over the written cache entries only: 40 tokens with max_new_tokens 20,000 and a
    32,768-position model never read more than prompt + 40 entries (no wall time: the shapes say it).
    The torch path's attention is seen by its key shapes; the C step attends over each row's pos + 1
    entries, so its largest position says the same."""
    from codelm.generate import SamplingParams, cpu_kernel
    from codelm.generate.engine import Engine, Row
    from codelm.generate.weights import EngineConfig

    model = tiny_llama(300, max_seq_len=32768)
    attended = []
    attend, kernel = Engine._attend_one, cpu_kernel.DecodeKernel.__call__
    monkeypatch.setattr(Engine, "_attend_one", lambda self, q, k, v, bias: attended.append(k.shape[-2])
                        or attend(self, q, k, v, bias))
    monkeypatch.setattr(cpu_kernel.DecodeKernel, "__call__", lambda self, tokens, pos, *rest: attended.append(
        int(pos.max()) + 1) or kernel(self, tokens, pos, *rest))
    prompt = [1, 5, 6, 7]
    for choice in ("torch", "auto"):
        attended.clear()
        engine = Engine(model, EngineConfig(kernel=choice))
        # The stop string ends the row after 40 tokens, whatever max_new_tokens allows.
        row = Row(prompt, SamplingParams(max_new_tokens=20_000, stop=("x" * 40,)), frozenset(),
                  lambda toks: "x" * len(toks), 20_000)
        (g,) = engine.run([row])
        assert g.finish_reason == "stop_string"
        # 40 tokens were made (the last is never fed back), and no step read past them.
        assert max(attended) == len(prompt) + 39


def test_every_flag_has_help_and_shows_its_default():
    import argparse

    from codelm.cli import build_parser

    def actions(parser, name):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub, p in a.choices.items():
                    yield from actions(p, f"{name} {sub}")
            elif not isinstance(a, argparse._HelpAction):
                yield name, a

    missing = []
    for name, a in actions(build_parser(), "codelm"):
        flag = "/".join(a.option_strings) or a.dest
        if not a.help:
            missing.append(f"{name} {flag}: no help")
        elif a.default not in (None, False, []) and not a.required and "default" not in a.help:
            missing.append(f"{name} {flag}: default {a.default!r} not shown")
    assert not missing, missing

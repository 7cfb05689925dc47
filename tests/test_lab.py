"""`codelm lab length`: recipes, reporting, and a fast run that must show train short / test long."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from codelm.cli import build_parser
from codelm.errors import ConfigError
from codelm import demo
from codelm.lab import length as lab
from codelm.lab import drills, report, stats
from codelm.train.recipe import RECIPES_DIR, read_raw_recipe
from codelm.train.runs import essentials
from codelm.train.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent


def test_lcft_recipes_carry_the_papers_values():
    r = load_recipe(RECIPES_DIR / "lcft-codellama-7b.toml")
    assert r.model.config["rope_theta"] == 1e6 and r.model.config["max_seq_len"] == 16384
    assert r.data.seq_len == 16384 and r.train.lr == 2e-5 and r.train.batch_tokens == 2 * 1024 * 1024
    assert r.train.max_steps == 10000 and r.model.init_from
    demo = load_recipe(RECIPES_DIR / "lcft-demo.toml")
    assert demo.model.config["rope_theta"] == 1e6 and demo.data.seq_len == 4 * 256
    # LCFT with at most 2% of the demo's pretraining tokens (recipes/demo.toml: 600 x 4096).
    assert demo.train.max_steps * demo.train.batch_tokens <= 0.02 * 600 * 4096
    pre, ft = load_recipe(RECIPES_DIR / "lab-length.toml"), load_recipe(RECIPES_DIR / "lcft-lab.toml")
    # The lab's fine-tunes follow the paper's shape: 4x the length (Table 18), a learning rate 15x below the
    # pretraining peak (2e-5 after 3e-4), at most 5% of the pretraining tokens (the paper's LCFT is ~4%).
    assert ft.data.seq_len == 4 * pre.data.seq_len == lab.LabSettings(out=Path(".")).lcft_factor * pre.data.seq_len
    assert ft.train.lr == pytest.approx(pre.train.lr / 15, rel=0.02)
    assert ft.train.max_steps * ft.train.batch_tokens <= 0.05 * pre.train.max_steps * pre.train.batch_tokens


def _plan(tmp_path, L=64):
    pre, _ = read_raw_recipe(lab.PRETRAIN_RECIPE)
    ft, _ = read_raw_recipe(lab.LCFT_RECIPE)
    return lab.Plan(L, pre, ft, tmp_path / "code", tmp_path / "drills.jsonl", tmp_path / "drills-long.jsonl",
                    tmp_path / "tok")


def test_each_method_gets_its_own_fine_tune(tmp_path):
    s = lab.LabSettings(out=tmp_path, overrides=["data.seq_len=64", "model.config.n_heads=2", "model.config.n_kv_heads=2"],
                        lcft_factor=4)
    plan = _plan(tmp_path)
    by = {m.name: m for m in lab.methods(4)}
    base = tmp_path / "runs" / "seed0" / "rope" / "final"
    pi = lab.lcft_recipe(s, plan, 0, by["pi-ft"], base)
    assert pi.model.config["rope_scaling"] == {"type": "linear", "factor": 4.0}
    assert pi.data.seq_len == 256 and pi.model.init_from == str(base) and pi.model.preset is None
    ours = lab.lcft_recipe(s, plan, 0, by["lcft-1e6"], base)
    assert ours.model.config["rope_theta"] == 1e6 and ours.model.config["max_seq_len"] == 256
    assert lab.lcft_recipe(s, plan, 0, by["lcft-1e4"], base).model.config["rope_theta"] == 1e4
    alibi = lab.pretrain_recipe(s, plan, 2, "alibi")
    assert alibi.model.config["position_encoding"] == "alibi" and alibi.run.seed == 2
    # The user's --set reaches the model next to the lab's own settings.
    assert alibi.model.config["n_heads"] == 2 and alibi.model.config["dim"] == 128
    assert alibi.model.config["max_seq_len"] == 64
    assert [x.kind for x in alibi.data.sources] == ["text", "instruct"]
    assert [x.name for x in alibi.data.sources] == ["code", "drills"]
    # Pretraining drills: at most L tokens, answer only. The fine-tunes' drills: at their length, code trained too.
    drills = alibi.data.sources[1]
    assert drills.path == str(plan.drills) and drills.prompt_loss_weight == 0.0
    assert drills.loss_weight == s.drill_loss_weight and drills.weight == s.drill_weight
    # By default most of the fine-tunes' rows are drills, at their own length, code trained too.
    long = ours.data.sources[1]
    assert long.path == str(plan.lcft_drills) and long.prompt_loss_weight == 1.0
    assert long.loss_weight == s.lcft_drill_loss_weight and long.weight == s.lcft_drill_weight == 0.9
    s.lcft_drill_weight = 0.0
    assert [x.name for x in lab.lcft_recipe(s, plan, 0, by["lcft-1e6"], base).data.sources] == ["code"]
    bad = lab.LabSettings(out=tmp_path, overrides=["train.lr_max=1"])
    with pytest.raises(ConfigError, match="lr_max"):
        lab.pretrain_recipe(bad, plan, 0, "rope")


def test_drills_are_short_and_answerable(tmp_path):
    from codelm.evaluate.longctx import oracle_answer
    from codelm.tokenizer import stdlib_sample_texts, train_tokenizer

    code = tmp_path / "code"
    code.mkdir()
    (code / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in stdlib_sample_texts(100_000)))
    tok = train_tokenizer(stdlib_sample_texts(100_000), 264, show_progress=False)
    path = drills.write_drills(tok, code, tmp_path / "drills.jsonl", seq_len=256, n=30)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(rows) == 30
    for row in rows:
        # BOS + prompt + completion fit one training row of 256 tokens.
        assert 1 + len(tok.encode(row["prompt"] + row["completion"])) <= 256
        # The task is the evaluation's: the paper's key and question; the completion is the value.
        assert row["prompt"].endswith("\nassert my_function() == ") and row["completion"].endswith("\n")
        assert oracle_answer(row["prompt"]) == row["completion"].strip()
    assert len({row["completion"] for row in rows}) > 10
    # Key-to-question distances spread over the window, short ones the most frequent.
    question = len(tok.encode("\nassert my_function() == "))
    gaps = [len(tok.encode(r["prompt"].split(f"return {r['completion']}", 1)[1])) - question for r in rows]
    assert min(gaps) < 15 and max(gaps) > 60 and np.median(gaps) < 50, gaps


def test_wilson_interval_on_hand_values():
    # Wilson's score interval, z = 1.96: 0/64 -> [0, z²/(n+z²)], n/n -> [n/(n+z²), 1], 32/64 symmetric about 1/2.
    assert stats.wilson(0, 64) == (0.0, pytest.approx(0.05662, abs=1e-4))
    assert stats.wilson(64, 64) == (pytest.approx(0.94338, abs=1e-4), 1.0)
    lo, hi = stats.wilson(32, 64)
    assert lo == pytest.approx(0.3810, abs=1e-4) and hi == pytest.approx(0.6190, abs=1e-4)
    lo, hi = stats.wilson(10, 100)                      # a textbook value: 10/100 -> [5.52%, 17.44%]
    assert lo == pytest.approx(0.0552, abs=1e-4) and hi == pytest.approx(0.1744, abs=1e-4)
    with pytest.raises(ValueError, match="hits"):
        stats.wilson(5, 4)
    # Pooling: three seeds' accuracies of 64 prompts each become one count of 192.
    p = stats.pooled([1.0, 0.5, 0.0], 64)
    assert (p["hits"], p["n"], p["mean"]) == (96, 192, 0.5) and p["lo"] < 0.5 < p["hi"]
    assert stats.pooled([1.0], 64)["lo"] == pytest.approx(0.94338, abs=1e-4)


def _pattern_summary(cells: dict, L=64, ft=4):
    """A summary with only what pattern_checks reads: {method: [accuracy at 1, 2, 4, 8, 16 L]}, 192 prompts."""
    mults = (1, 2, 4, 8, 16)
    return {"L": L, "lcft_length": ft * L, "kr_lengths": [m * L for m in mults],
            "methods": {name: {"label": name, "key_retrieval_by_length": {
                str(m * L): stats.pooled([a], 192) for m, a in zip(mults, accs)}} for name, accs in cells.items()}}


def test_pattern_checks_read_the_intervals():
    paper = {"rope": [0.95, 0.0, 0.0, 0.0, 0.0], "rope-1e6-infer": [0.95, 0.0, 0.0, 0.0, 0.0],
             "lcft-1e4": [0.75, 0.2, 0.0, 0.0, 0.0], "pi-ft": [1.0, 1.0, 0.67, 0.0, 0.0],
             "lcft-1e6": [0.97, 0.98, 0.84, 0.45, 0.1]}
    checks = stats.pattern_checks(_pattern_summary(paper))
    assert checks and all(c["held"] for c in checks), [c for c in checks if not c["held"]]
    said = " / ".join(c["statement"] for c in checks)
    assert "base RoPE high at L and near 0 from 2L" in said and "PI ×4 high up to 4L, near 0 beyond" in said
    assert "LCFT θ=1e6 clearly above every other RoPE row at 16L" in said
    # The lab's earlier run: LCFT θ=1e6 lost the skill (21% at L), θ→1e6 at inference kept some.
    old = dict(paper, **{"lcft-1e6": [0.21, 0.26, 0.21, 0.01, 0.06], "rope-1e6-infer": [0.28, 0.39, 0.42, 0.08, 0.07]})
    failed = {c["statement"] for c in stats.pattern_checks(_pattern_summary(old)) if not c["held"]}
    assert failed == {"LCFT θ=1e6 high up to 4L", "θ→1e6 at inference only no better than base RoPE at 2L",
                      "θ→1e6 at inference only no better than base RoPE at 4L",
                      "θ→1e6 at inference only no better than base RoPE at 8L",
                      "θ→1e6 at inference only no better than base RoPE at 16L",
                      "LCFT θ=1e6 clearly above every other RoPE row at 8L",
                      "LCFT θ=1e6 clearly above every other RoPE row at 16L"}
    # Means alone would not decide: 5/192 against 1/192 overlaps, so "above" does not hold.
    close = dict(paper, **{"lcft-1e6": [0.97, 0.98, 0.84, 5 / 192, 0.1]})
    assert not next(c for c in stats.pattern_checks(_pattern_summary(close)) if c["statement"].endswith("8L")
                    and "clearly above" in c["statement"])["held"]


def test_drills_place_keys_at_the_requested_distances_up_to_the_fine_tune_length(tmp_path):
    from codelm.evaluate.longctx import key_snippets, oracle_answer
    from codelm.tokenizer import stdlib_sample_texts, train_tokenizer

    texts = stdlib_sample_texts(150_000)
    tok = train_tokenizer(texts, 300, show_progress=False)
    fill = tok.encode("".join(texts))[:600]
    L, factor = 64, 4
    for distance in (0, 1, 17, L, 2 * L, factor * L - 80):
        ids, got = drills.drill_tokens(tok, fill[:factor * L - 70], factor * L - 70 - distance, 42)
        key, question = key_snippets(tok, 42)
        start = ids.index(key[0], factor * L - 70 - distance)
        assert got == distance and ids[start:start + len(key)] == key
        # Exactly `distance` filler tokens lie between the key's last token and the question.
        assert len(ids) - len(question) - (start + len(key)) == distance
    with pytest.raises(ConfigError, match="cannot sit after"):
        drills.drill_tokens(tok, fill[:10], 11, 42)
    # The fine-tunes' drills (written at their row length) spread keys from next to the question to most of
    # the row away, far beyond the pretraining's L.
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    rows = [json.loads(x) for x in drills.write_drills(tok, code, tmp_path / "d.jsonl", factor * L * 2, 120).read_text()
            .splitlines()]
    question = len(tok.encode("\nassert my_function() == "))
    gaps = [len(tok.encode(r["prompt"].split(f"return {r['completion']}", 1)[1])) - question for r in rows]
    assert all(oracle_answer(r["prompt"]) == r["completion"].strip() for r in rows)
    assert min(gaps) < 20 and max(gaps) > factor * L, (min(gaps), max(gaps))


def _fake_results(methods, seeds, data, L):
    rng = np.random.default_rng(0)
    results = {}
    for m in methods:
        results[m.name] = {}
        for seed in range(seeds):
            results[m.name][seed] = {
                "perplexity": {str(n): {"ppl": float(3 + n / L * (m.name == "rope") + rng.random())} for n in data.ppl_lengths},
                "key_retrieval": {f"{n}@{p:g}": int(rng.integers(0, 65)) / 64 for n in data.kr_lengths
                                  for p in (0.0, 0.2, 0.4)},
                "sweep": {f"{data.sweep_length}@{p:g}": int(rng.integers(0, 65)) / 64 for p in (0.0, 0.25, 0.5, 0.75, 1.0)},
                "loss_by_position": {"edges": [0, 256, 512], "loss": [1.0, 1.5]},
            }
    return results


def _report_inputs(tmp_path, L: int, lcft_tokens: int):
    """The six methods, evaluation lengths up to 16L and a plan, for reports built from _fake_results."""
    data = lab.EvalData(docs=[np.zeros(600, dtype=np.int64)], filler=np.zeros(1), ppl_lengths=[8, 16, 32, 64, 128, 256, 512],
                        kr_lengths=[32, 64, 128, 256, 512], sweep_length=256, window=512)
    plan = _plan(tmp_path, L)
    plan.pretrain_tokens, plan.lcft_tokens = 100_000, lcft_tokens
    return lab.methods(4), data, plan


def test_summary_table_plots_and_notes(tmp_path):
    L = 32
    ms, data, plan = _report_inputs(tmp_path, L, 2_000)
    s = lab.LabSettings(out=tmp_path, seeds=3)
    summary = report.summarize(_fake_results(ms, 3, data, L), ms, data, L, s, plan)
    rope = summary["methods"]["rope"]["perplexity"]["128"]
    assert len(rope["values"]) == 3 and rope["std"] > 0
    assert summary["methods"]["lcft-1e6"]["ppl_half_L_before"] == summary["methods"]["rope"]["perplexity"]["16"]
    table = report.table_markdown(summary)
    assert "| RoPE θ=1e4 |" in table and "±" in table and "Position sweep" in table and "Goal" in table
    assert "→" in table.split("\n")[6]              # L/2 before → after for a fine-tuned row
    report.plot_all(summary, tmp_path)
    for png in ("ppl_by_length.png", "key_retrieval.png", "loss_by_position.png", "rope_decay.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    notes = report.explanation(summary, table)
    assert notes.startswith("# Train short, test long") and "nan" not in notes
    assert "at 2L" in notes and "In the position sweep at 8L, ALiBi answers" in notes
    summary["lcft_length"] = 8 * L                  # fine-tunes at 8L: each length is named once per curve
    assert not re.search(r"at 8L, [0-9.]+ at 8L", report.explanation(summary, table))


def test_notes_say_when_the_base_or_the_fine_tune_lacks_the_skill(tmp_path):
    L = 32
    ms, data, plan = _report_inputs(tmp_path, L, 5_000)
    results = _fake_results(ms, 2, data, L)

    def notes(at_L: dict) -> str:
        for name, acc in at_L.items():
            for per_seed in results[name].values():
                per_seed["key_retrieval"].update({f"{L}@{p:g}": acc for p in (0.0, 0.2, 0.4)})
        summary = report.summarize(results, ms, data, L, lab.LabSettings(out=tmp_path, seeds=2), plan)
        return report.explanation(summary, report.table_markdown(summary))

    # The base learned (100% at L), the fine-tune with θ = 1e6 kept 25%: the notes say the new θ broke it.
    assert "but LCFT with θ = 1e6 kept only 25% of it at L" in notes({"rope": 1.0, "lcft-1e6": 0.25, "alibi": 1.0})
    # The base did not learn (25% at L, ALiBi did): the notes say so, and not the fine-tune's story.
    text = notes({"rope": 0.25, "lcft-1e6": 0.25, "alibi": 1.0})
    assert "The RoPE model did not learn the skill within its own window (25% at L" in text
    assert "kept only" not in text
    # Both learned and kept it: neither note.
    text = notes({"rope": 1.0, "lcft-1e6": 0.875, "alibi": 1.0})
    assert "kept only" not in text and "did not learn" not in text


def test_rope_decay_bound_decays_more_slowly_with_a_larger_base():
    d = np.arange(0, 16000, 10)
    small, large = report.rope_decay_bound(128, 1e4, d), report.rope_decay_bound(128, 1e6, d)
    assert small[0] == pytest.approx(large[0]) == pytest.approx(32.5, abs=0.1)   # distance 0: (1/64)·Σ j
    # The bound oscillates; averaged over a stretch of distances it is higher for θ = 1e6 everywhere.
    for a in range(0, 16000, 2000):
        part = (d >= a) & (d < a + 2000)
        assert large[part].mean() > 1.2 * small[part].mean()


def test_cli_declares_the_lab():
    args = build_parser().parse_args(["lab", "length", "--quick", "--seeds", "2", "--set", "train.max_steps=5",
                                      "--only-seed", "1"])
    assert args.experiment == "length" and args.quick and args.seeds == 2 and args.set == ["train.max_steps=5"]
    assert args.only_seed == 1
    args = build_parser().parse_args(["lab", "longctx", "--model", "m", "--corpus", "c", "--lengths", "L,4L"])
    assert args.benchmark == "all" and args.examples == 64


@pytest.mark.slow
def test_fast_lab_shows_train_short_test_long(tmp_path):
    from codelm.data.corpus import stdlib_dir

    # The quick sizes (L = 32 bytes, a 2-layer model) with a shorter pretraining: 300 steps of 1,024 tokens,
    # and a 6-step fine-tune at 4L (2% of the pretraining tokens).
    s = lab.quick_settings(lab.LabSettings(out=tmp_path, seeds=1, show_progress=False, methods=["rope", "lcft-1e6"],
                                           overrides=["train.max_steps=300", "train.warmup_steps=30"],
                                           lcft_overrides=["train.max_steps=6"]))
    s.corpus_sources = [str(stdlib_dir() / d) for d in ("json", "email", "http", "urllib", "logging")]
    s.train_chars, s.eval_tokens = 400_000, 2048
    summary = lab.run_lab(s)
    L = summary["L"]
    ppl = {m: {int(n): v["mean"] for n, v in e["perplexity"].items()} for m, e in summary["methods"].items()}
    # Plain RoPE at 4L: in the quick run it is 2-3x its value at L (the angles beyond L were never seen);
    # a model that ignored positions would stay at 1x, since more context never hurts it. 1.4 leaves room
    # for a worse seed or a shorter run while staying far above what any length-robust model gives.
    assert ppl["rope"][4 * L] > 1.4 * ppl["rope"][L]
    # LCFT with θ=1e6 at 4L brings 4L back to within 15% of its own L (1.01-1.05 seen), and well under
    # plain RoPE at 4L: the fine-tune teaches the new angles with 2% of the pretraining tokens.
    assert ppl["lcft-1e6"][4 * L] < 1.15 * ppl["lcft-1e6"][L]
    assert ppl["lcft-1e6"][4 * L] < 0.75 * ppl["rope"][4 * L]
    assert summary["lcft_share"] <= 0.02
    for name in ("results.json", "table.md", "README.md", "ppl_by_length.png", "loss_by_position.png"):
        assert (tmp_path / name).is_file()
    # Run again: every run and evaluation is reused (nothing rewritten), and the numbers are the same.
    made = {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/seed0/*/final/model.safetensors")}
    cached = {p: p.stat().st_mtime_ns for p in tmp_path.glob("evals/seed0/*.json")}
    assert len(made) == 2 and len(cached) == 2
    again = lab.run_lab(s)
    assert again["methods"]["rope"]["perplexity"] == summary["methods"]["rope"]["perplexity"]
    assert {p: p.stat().st_mtime_ns for p in made} == made and {p: p.stat().st_mtime_ns for p in cached} == cached


def test_one_process_per_seed_then_the_tables_from_the_finished_runs(tmp_path):
    from codelm.data.corpus import stdlib_dir

    def settings(**kw):
        s = lab.quick_settings(lab.LabSettings(out=tmp_path, seeds=2, show_progress=False, methods=["rope"], threads=1,
                                               overrides=["train.max_steps=4", "train.warmup_steps=1"], **kw))
        s.corpus_sources = [str(stdlib_dir() / d) for d in ("json", "email", "http")]
        s.train_chars, s.eval_tokens = 100_000, 512
        return s

    with pytest.raises(ConfigError, match="--only-seed must be between 0 and 1"):
        lab.run_lab(settings(only_seed=2))
    got = lab.run_lab(settings(only_seed=1))
    assert got["only_seed"] == 1 and not (tmp_path / "results.json").exists()
    assert (tmp_path / "runs/seed1/rope/final").is_dir() and not (tmp_path / "runs/seed0").exists()
    made = (tmp_path / "runs/seed1/rope/final/model.safetensors").stat().st_mtime_ns
    evaluated = (tmp_path / "evals/seed1/rope.json").read_text()
    summary = lab.run_lab(settings())  # trains seed 0, reuses seed 1's run and evaluation
    assert summary["seeds"] == 2 and len(summary["methods"]["rope"]["perplexity"][str(summary["L"])]["values"]) == 2
    assert (tmp_path / "runs/seed1/rope/final/model.safetensors").stat().st_mtime_ns == made
    assert (tmp_path / "evals/seed1/rope.json").read_text() == evaluated


RETRIEVAL_RUN = ["data.seq_len=96", "tokenizer.vocab_size=512", "model.config.n_layers=3", "train.max_steps=1500",
                 "train.warmup_steps=50", "train.checkpoint_every=1500"]


@pytest.mark.slow
def test_tiny_base_model_retrieves_at_L_far_above_chance(tmp_path):
    from codelm.data.corpus import stdlib_dir

    # A dedicated tiny run (the quick sizes' dim-64 model with 3 layers, a 512-token BPE, L = 96 tokens, 1,500
    # steps of 1,024 tokens, half the rows drills, one thread so the run repeats exactly): about 1 minute of CPU.
    # With this tokenizer the key and question take 60 tokens: prompts of L tokens put the key 35, 28 and 21
    # tokens before the question (key positions 0, 0.2, 0.4), and the drills reach 32. The same run at L = 64,
    # where a drill has no room for filler (distance 0 only) and the prompts at L ask 2-3, answered 0 of 96 at L
    # and 31 of 32 with the key next to the question: the skill was there, the distances asked never trained
    # (what the earlier tries at L = 64 ran into).
    s = lab.LabSettings(out=tmp_path, seeds=1, quick=True, show_progress=False, methods=["rope"], threads=1,
                        overrides=RETRIEVAL_RUN, retrieval_examples=32, retrieval_max_multiple=1, sweep_multiple=1,
                        max_length_multiple=4, train_chars=400_000, eval_tokens=2048)
    s.corpus_sources = [str(stdlib_dir() / d) for d in ("json", "email", "http", "urllib", "logging")]
    summary = lab.run_lab(s)
    at_L = summary["methods"]["rope"]["key_retrieval_by_length"][str(summary["L"])]
    # Chance is 1 in 90 (a two-digit value). Seen: 52 of 96 (54%). Asked: the 95% interval's lower end at least
    # 10x chance (11%), i.e. about 18 of 96 prompts or more; a model that guesses, or answers one fixed
    # number, or reads from distances it was never trained on (the L = 64 run) stays near 1 of 96.
    assert at_L["n"] == 96
    assert at_L["lo"] >= 10 / 90, at_L
    # Keys next to the question (the position sweep's 1.0) are the easiest: nearly always found.
    assert summary["methods"]["rope"]["sweep"][f"{summary['L']}@1"]["mean"] >= 0.5


def test_demo_lcft_step_fine_tunes_and_plots(tmp_path):
    import torch

    from codelm.model.checkpoint import load, save_hf
    from codelm.model.config import ModelConfig
    from codelm.model.llama import Transformer
    from codelm.tokenizer import stdlib_sample_texts, train_tokenizer

    texts = stdlib_sample_texts(120_000)
    tok = train_tokenizer(texts, 300, show_progress=False)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, part in (("train", texts[:-3]), ("valid", texts[-3:])):
        (corpus / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=tok.vocab_size, multiple_of=16,
                                    max_seq_len=32))
    save_hf(model, tmp_path / "final", tokenizer=tok)
    got = demo.demo_lcft_step(tmp_path / "final", corpus, tmp_path / "out", quick=True, show_progress=False)
    assert got["trained_length"] == 32 and got["lcft_length"] == 64
    assert set(got["perplexity"]) == {"before", "after"} and set(got["perplexity"]["after"]) == {"16", "32", "64", "128"}
    assert (tmp_path / "out" / "ppl_by_length.png").read_bytes()[:4] == b"\x89PNG"
    after = load(got["model"])
    assert after.config.rope_theta == 1e6 and after.config.max_seq_len == 64


def test_a_moved_lab_folder_still_reuses_its_runs():
    def recipe(root, drill_weight=0.5):
        return {"run": {"out_dir": f"{root}/runs/seed0/lcft-1e6", "seed": 0},
                "model": {"init_from": f"{root}/runs/seed0/rope/final", "config": {"rope_theta": 1e6}},
                "data": {"seq_len": 1024, "sources": [
                    {"path": f"{root}/data/code", "weight": 1 - drill_weight},
                    {"path": f"{root}/data/retrieval-drills-1024.jsonl", "weight": drill_weight, "loss_weight": 1000.0}]},
                "train": {"max_steps": 48, "batch_tokens": 1024, "lr": 1e-3, "warmup_steps": 1}}

    assert essentials(recipe("/tmp/a")) == essentials(recipe("/home/u/labs/b"))
    assert essentials(recipe("/tmp/a")) != essentials(recipe("/tmp/a", drill_weight=0.25))
    moved_data = recipe("/tmp/a")
    moved_data["data"]["sources"][0]["path"] = "/elsewhere/code"
    assert essentials(recipe("/tmp/a")) != essentials(moved_data)


def test_fine_tune_settings_keep_the_base_models_evaluations(tmp_path):
    pre, _ = read_raw_recipe(lab.PRETRAIN_RECIPE)
    ft, _ = read_raw_recipe(lab.LCFT_RECIPE)
    keys = lab._eval_keys(lab.LabSettings(out=tmp_path), pre, ft)
    other_ft = lab._eval_keys(lab.LabSettings(out=tmp_path / "x", lcft_drill_weight=0.5, lcft_factor=4), pre,
                              dict(ft, train=dict(ft["train"], lr=5e-4)))
    assert other_ft[False] == keys[False] and other_ft[True] != keys[True]
    other_base = lab._eval_keys(lab.LabSettings(out=tmp_path, drill_weight=0.25), pre, ft)
    assert other_base[False] != keys[False] and other_base[True] != keys[True]
    assert lab._eval_keys(lab.LabSettings(out=tmp_path, retrieval_examples=4), pre, ft)[False] != keys[False]

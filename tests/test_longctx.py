"""Long-context evaluation: key-retrieval prompts, the exact-match oracle, sliding-window perplexity."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from codelm.errors import ConfigError, DataError
from codelm.evaluate import longctx as lc
from codelm.model.config import ModelConfig
from codelm.model.llama import Transformer


@pytest.fixture(scope="module")
def tokenizer():
    from codelm.tokenizer import stdlib_sample_texts, train_tokenizer

    # Some merges, so tokens span several bytes and lengths are not character counts.
    return train_tokenizer(stdlib_sample_texts(300_000), 600, show_progress=False)


@pytest.fixture(scope="module")
def filler(tokenizer):
    from codelm.tokenizer import stdlib_sample_texts

    return lc.code_token_stream(stdlib_sample_texts(200_000), tokenizer)


@pytest.mark.parametrize("length", [97, 256, 1000])
@pytest.mark.parametrize("position", [0.0, 0.2, 0.5, 1.0])
def test_prompts_have_the_requested_length_and_an_oracle_finds_the_value(tokenizer, filler, length, position):
    examples = lc.key_retrieval_examples(tokenizer, filler, length, position, n=6, seed=3)
    assert len(examples) == 6
    for e in examples:
        assert len(e.ids) == length == e.length
        assert 10 <= e.value <= 99
        key, question = lc.key_snippets(tokenizer, e.value)
        assert e.ids[0] == tokenizer.bos_id
        assert e.ids[e.key_start:e.key_start + len(key)] == key
        assert e.ids[-len(question):] == question
        text = tokenizer.decode(e.ids)
        assert text.rstrip().endswith("assert my_function() ==")
        assert lc.oracle_answer(text) == str(e.value)       # the trivial exact-match oracle
    n_fill = length - 1 - len(key) - len(question)
    assert examples[0].key_start == 1 + round(position * n_fill)


def test_oracle_ignores_the_distractor_and_other_functions():
    text = ("def other() -> int:\n    return 12\n\n" + lc.KEY_FUNCTION.format(name="my_function", value=57)
            + "\nx = 3\nassert my_function() == ")
    assert lc.oracle_answer(text) == "57"
    assert lc.oracle_answer("no key here") is None


def test_prompts_are_reproducible_and_differ_across_seeds(tokenizer, filler):
    a = lc.key_retrieval_examples(tokenizer, filler, 300, 0.4, 4, seed=1)
    b = lc.key_retrieval_examples(tokenizer, filler, 300, 0.4, 4, seed=1)
    c = lc.key_retrieval_examples(tokenizer, filler, 300, 0.4, 4, seed=2)
    assert [e.ids for e in a] == [e.ids for e in b]
    assert [e.ids for e in a] != [e.ids for e in c]


def test_bad_retrieval_requests_are_refused(tokenizer, filler):
    with pytest.raises(ConfigError, match="shorter than the key function"):
        lc.key_retrieval_examples(tokenizer, filler, 20, 0.0, 1)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        lc.key_retrieval_examples(tokenizer, filler, 300, 1.5, 1)
    with pytest.raises(DataError, match="cannot fill"):
        lc.key_retrieval_examples(tokenizer, filler[:50], 300, 0.5, 1)


class AnsweringModel(torch.nn.Module):
    """Greedy decoding sees this 'model' answer each prompt with the text `answers[prompt]` gives."""

    def __init__(self, config, tokenizer, answers):
        super().__init__()
        self.config = config
        self.tok_embeddings = torch.nn.Embedding(1, 1)
        self.answers = {tuple(k): tokenizer.encode(v) + [tokenizer.eos_id] * 8 for k, v in answers.items()}
        self.vocab = config.vocab_size

    def forward(self, x, cache=None, last_only=False):
        if x.shape[1] > 1:                        # the prefill: remember which prompt each row is
            self.pending = [list(self.answers[tuple(row)]) for row in x.tolist()]
        logits = torch.full((x.shape[0], 1, self.vocab), -1e9)
        for i, p in enumerate(self.pending):
            logits[i, 0, p.pop(0)] = 0.0
        return logits


@pytest.mark.parametrize("reply,expected", [("{v}\n", 1.0), (" {v})", 1.0), ("{v}3", 0.0), ("1{v}", 0.0),
                                            ("x", 0.0)])
def test_accuracy_is_exact_match_of_the_greedy_answer(tokenizer, filler, reply, expected):
    examples = lc.key_retrieval_examples(tokenizer, filler, 200, 0.3, n=5, seed=0)
    config = ModelConfig(dim=16, n_layers=1, n_heads=2, vocab_size=tokenizer.vocab_size, multiple_of=16)
    model = AnsweringModel(config, tokenizer, {tuple(e.ids): reply.format(v=e.value) for e in examples})
    assert lc.key_retrieval_accuracy(model, tokenizer, examples, batch_size=2) == expected


def test_answer_of_reads_the_leading_number():
    assert lc.answer_of(" 42\n") == "42"
    assert lc.answer_of("42)") == "42"
    assert lc.answer_of("x42") == ""


# ------------------------------------------------------------ perplexity
@pytest.mark.parametrize("n,length", [(10, 4), (50, 16), (33, 8), (7, 32), (100, 100), (101, 100)])
def test_sliding_windows_score_every_target_once(n, length):
    stride = length // 2
    seen = []
    for b, e, s in lc._windows(n, length, stride):
        assert 0 <= b < s <= e <= n and e - b <= length
        if b > 0:
            assert s - b >= length - stride           # later windows give each target at least n/2 of context
        seen.extend(range(s, e))
    assert seen == list(range(1, n))


def _tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=64, multiple_of=16, max_seq_len=16,
                                   **kw)).eval()


def test_perplexity_with_a_window_longer_than_the_file_is_plain_cross_entropy():
    model = _tiny_model()
    doc = np.random.default_rng(0).integers(0, 64, 40)
    with torch.no_grad():
        x = torch.from_numpy(doc)[None]
        direct = F.cross_entropy(model(x[:, :-1])[0], x[0, 1:]).item()
    got = lc.perplexity_by_length(model, [doc], [64])[64]
    assert got["tokens"] == 39
    assert got["loss"] == pytest.approx(direct, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(direct), rel=1e-5)


def test_every_length_scores_the_same_tokens():
    model = _tiny_model()
    docs = [np.random.default_rng(i).integers(0, 64, n) for i, n in enumerate((70, 45))]
    res = lc.perplexity_by_length(model, docs, [4, 8, 16, 32, 64])
    assert {r["tokens"] for r in res.values()} == {69 + 44}


def test_loss_by_position_and_long_documents(tokenizer):
    model = _tiny_model()
    docs = [np.random.default_rng(i).integers(0, 64, 80) for i in range(3)]
    out = lc.loss_by_position(model, docs, window=64, buckets=8)
    assert out["windows"] == 3 and len(out["loss"]) == 8 and out["edges"][-1] == 64
    assert all(math.isfinite(v) for v in out["loss"])
    with pytest.raises(DataError, match="101 tokens"):
        lc.loss_by_position(model, docs, window=100)
    texts = ["a = 1\n" * 200, "b = 2\n" * 10]
    got = lc.long_documents(texts, tokenizer, min_tokens=100, max_tokens_each=150)
    assert len(got) == 1 and len(got[0]) == 150 and got[0][0] == tokenizer.bos_id
    with pytest.raises(DataError, match="no held-out file"):
        lc.long_documents(texts, tokenizer, min_tokens=10_000)


def test_alibi_and_scaled_models_evaluate_beyond_their_length():
    for kw in ({"position_encoding": "alibi"}, {"rope_scaling": {"type": "linear", "factor": 4.0}}):
        model = _tiny_model(**kw)
        doc = np.random.default_rng(1).integers(0, 64, 200)
        res = lc.perplexity_by_length(model, [doc], [8, 64, 128])
        assert all(math.isfinite(r["ppl"]) for r in res.values())


def test_lengths_and_positions_parse():
    assert lc.parse_lengths("L/4,L,4L,16L", 128) == [32, 128, 512, 2048]
    assert lc.parse_lengths("1024, 2048", 128) == [1024, 2048]
    assert lc.parse_lengths(None, 64) == [16, 32, 64, 128, 256, 512, 1024]
    for bad in ("fourL", "L/3", "1"):
        with pytest.raises(ConfigError, match="--lengths"):
            lc.parse_lengths(bad, 128)
    assert lc.parse_positions("0,0.5,1", lc.PAPER_POSITIONS) == [0.0, 0.5, 1.0]
    assert lc.parse_positions(None, lc.PAPER_POSITIONS) == [0.0, 0.2, 0.4]
    with pytest.raises(ConfigError, match="outside"):
        lc.parse_positions("0,2", lc.PAPER_POSITIONS)


def test_lab_longctx_command_writes_both_benchmarks(tmp_path, tokenizer):
    import json

    from codelm.cli import main
    from codelm.model.checkpoint import save_hf
    from codelm.tokenizer import stdlib_sample_texts

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = stdlib_sample_texts(60_000)
    (corpus / "valid.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=32, n_layers=1, n_heads=2, vocab_size=tokenizer.vocab_size, multiple_of=16,
                                    max_seq_len=64))
    save_hf(model, tmp_path / "m", tokenizer=tokenizer)
    out = tmp_path / "res.json"
    rc = main(["lab", "longctx", "--model", str(tmp_path / "m"), "--corpus", str(corpus), "--lengths", "2L,4L",
               "--examples", "2", "--eval-tokens", "600", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["perplexity"]) == {"128", "256"} and res["trained_length"] == 64
    assert set(res["key_retrieval"]["grid"]) == {"128@0", "128@0.2", "128@0.4", "256@0", "256@0.2", "256@0.4"}
    assert set(res["key_retrieval"]["sweep"]) == {f"256@{p:g}" for p in lc.SWEEP_POSITIONS}
    assert main(["lab", "longctx", "--model", str(tmp_path / "m"), "--corpus", str(corpus), "--lengths", "x"]) == 2

"""Prompt layouts (token-exact with the reference), and completion/infilling end to end through the CLI."""
import subprocess
import sys

import pytest
from helpers import make_tiny_bpe, make_tiny_sentencepiece, tiny_llama

import codelm
from codelm.errors import TokenizerError
from codelm.generate import complete, complete_batch, infill, infill_batch, infilling_tokens
from codelm.model.checkpoint import save_hf, save_meta
from codelm.tokenizer import Tokenizer

PREFIX = 'def remove_non_ascii(s: str) -> str:\n    """ '
SUFFIX = "\n    return result\n"


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory):
    return Tokenizer.load(make_tiny_sentencepiece(tmp_path_factory.mktemp("sp")))


def test_psm_layout_is_exact(sp_tok):
    t = sp_tok
    toks = infilling_tokens(t, PREFIX, SUFFIX)
    enc_prefix, enc_suffix = t.encode(PREFIX), t.encode_infilling(SUFFIX)
    assert toks == [t.bos_id, t.prefix_id] + enc_prefix + [t.suffix_id] + enc_suffix + [t.middle_id]
    # The prefix gets SentencePiece's implicit leading space ("▁def"), the suffix does not:
    assert t.id_to_piece(enc_prefix[0]).startswith("▁")
    assert t.id_to_piece(enc_suffix[0]) != "▁" and t.id_to_piece(enc_suffix[0]) == "<0x0A>"
    assert t.id_to_piece(t.prefix_id) == "▁<PRE>" and t.id_to_piece(t.middle_id) == "▁<MID>"
    # The reference's own construction: encode("☺" + suffix) and drop the first two pieces.
    assert enc_suffix == t.encode("☺" + SUFFIX)[2:]


def test_spm_layout_is_exact(sp_tok):
    t = sp_tok
    toks = infilling_tokens(t, PREFIX, SUFFIX, spm=True)
    assert toks == ([t.bos_id, t.prefix_id, t.suffix_id] + t.encode_infilling(SUFFIX) + [t.middle_id]
                    + t.encode(PREFIX))


def test_suffix_with_leading_spaces_keeps_them(sp_tok):
    t = sp_tok
    suffix = "  x = 1\n"
    assert t.decode_infilling(t.encode_infilling(suffix)) == suffix


def test_infilling_needs_fim_tokens(tmp_path):
    t = Tokenizer.load(make_tiny_sentencepiece(tmp_path, with_fim=False))
    with pytest.raises(TokenizerError, match="infilling"):
        infilling_tokens(t, "a", "b")


def _tiny_model(vocab, seed=0):
    return tiny_llama(vocab, seed, max_seq_len=256)


@pytest.fixture(scope="module")
def bpe_ckpt(tmp_path_factory):
    tok = make_tiny_bpe()
    d = tmp_path_factory.mktemp("ckpt") / "model"
    save_hf(_tiny_model(tok.vocab_size), d, tokenizer=tok)
    return d


def test_load_complete_and_infill(bpe_ckpt):
    loaded = codelm.load(bpe_ckpt)
    assert loaded.tokenizer is not None and loaded.config.vocab_size == loaded.tokenizer.vocab_size
    text = complete(loaded.model, loaded.tokenizer, "def f(x):\n", max_new_tokens=12)
    g = complete_batch(loaded.model, loaded.tokenizer, ["def f(x):\n"], max_new_tokens=12)[0]
    assert g.text == text and len(g.tokens) <= 12
    assert loaded.tokenizer.decode_infilling(g.tokens) == text
    mid = infill_batch(loaded.model, loaded.tokenizer, [("def f(x):\n    return ", "\n")], max_new_tokens=8)[0]
    assert mid.finish_reason in ("length", "stop_token")
    assert infill(loaded.model, loaded.tokenizer, "def f(x):\n    return ", "\n", max_new_tokens=8) == mid.text
    spm = infill(loaded.model, loaded.tokenizer, "a = ", "\n", spm=True, max_new_tokens=4)
    assert isinstance(spm, str)


def test_meta_checkpoint_with_sentencepiece_completes(tmp_path, sp_tok):
    vocab = -(-sp_tok.vocab_size // 8) * 8  # shardable, and larger than the tokenizer as real models may be
    save_meta(_tiny_model(vocab, 1), tmp_path / "meta", num_shards=2, tokenizer=sp_tok)
    loaded = codelm.load(tmp_path / "meta")
    assert loaded.tokenizer.kind == "sentencepiece"
    out = infill(loaded.model, loaded.tokenizer, PREFIX, SUFFIX, max_new_tokens=5)
    assert isinstance(out, str)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "codelm.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_complete_and_infill_stream(bpe_ckpt, tmp_path):
    loaded = codelm.load(bpe_ckpt)
    expected = complete(loaded.model, loaded.tokenizer, "import os\n", max_new_tokens=10)
    r = _cli("complete", "--model", str(bpe_ckpt), "--max-new-tokens", "10", "import os\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "import os\n" + expected + "\n"
    src = tmp_path / "f.py"
    src.write_text("def add(a, b):\n    return <FILL>\n")
    mid = infill(loaded.model, loaded.tokenizer, "def add(a, b):\n    return ", "\n", max_new_tokens=6)
    r = _cli("infill", "--model", str(bpe_ckpt), "--file", str(src), "--max-new-tokens", "6")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "def add(a, b):\n    return " + mid + "\n"


def test_cli_bad_inputs(bpe_ckpt, tmp_path):
    src = tmp_path / "nofill.py"
    src.write_text("x = 1\n")
    r = _cli("infill", "--model", str(bpe_ckpt), "--file", str(src))
    assert r.returncode == 2 and "nofill.py: expected exactly one <FILL> marker, found 0" in r.stderr
    assert "Traceback" not in r.stderr
    r = _cli("complete", "--model", str(tmp_path / "missing"), "x")
    assert r.returncode == 2 and "no such checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_cli_infill_without_fim_tokens(tmp_path):
    tok = Tokenizer.load(make_tiny_sentencepiece(tmp_path / "t", with_fim=False))
    save_hf(_tiny_model(tok.vocab_size), tmp_path / "m", tokenizer=tok)
    r = _cli("infill", "--model", str(tmp_path / "m"), "--prefix", "a", "--suffix", "b")
    assert r.returncode == 2 and "infilling" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_info_cli():
    r = _cli("info", "--preset", "codellama-7b")
    assert r.returncode == 0 and "6.74B parameters" in r.stdout

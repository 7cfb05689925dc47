"""Tokenizer tests: Code Llama's SentencePiece rules, tokenizer.json equivalence, our byte-level BPE,
transformers interoperability, and bad input."""

import json
import pickle
import shutil
import warnings

import pytest
import sentencepiece as spm
from helpers import (SENTINEL_PIECE, make_tiny_bpe, make_tiny_sentencepiece, sample_snippets,
                     stdlib_corpus)

from codelm.errors import CodelmError, ConfigError, TokenizerError
from codelm.tokenizer import CODE_LLAMA_FIM_PIECES, SPECIAL_TOKENS, Tokenizer, train_tokenizer

# The reference repository's first infilling example (reference doc §2.1).
REF_PREFIX = 'def remove_non_ascii(s: str) -> str:\n    """ '
REF_SUFFIX = "\n    return result\n"


@pytest.fixture
def sp_path(tmp_path):
    return make_tiny_sentencepiece(tmp_path / "sp")


@pytest.fixture
def sp_tok(sp_path):
    return Tokenizer.load(sp_path)


def _auto_tokenizer(directory):
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoTokenizer.from_pretrained(str(directory))


def _assert_same_encodings(a: Tokenizer, b: Tokenizer, texts):
    for text in texts:
        assert a.encode(text) == b.encode(text), repr(text)
        assert a.encode_infilling(text) == b.encode_infilling(text), repr(text)
        ids = a.encode(text)
        assert a.decode(ids) == b.decode(ids), repr(text)
        assert a.decode_infilling(ids) == b.decode_infilling(ids), repr(text)


# ---- SentencePiece: Code Llama's tokenizer ------------------------------------------------------


def test_sentencepiece_special_ids(sp_path):
    tok = Tokenizer.load(sp_path)
    raw = spm.SentencePieceProcessor(model_file=str(sp_path))
    n = raw.get_piece_size()
    assert tok.kind == "sentencepiece" and tok.vocab_size == n
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, None)
    # The four infilling pieces are the last four, in Code Llama's order PRE, SUF, MID, EOT.
    assert [tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id] == list(range(n - 4, n))
    assert [tok.id_to_piece(i) for i in range(n - 4, n)] == list(CODE_LLAMA_FIM_PIECES)
    assert tok.step_id is None
    tok.require_infilling()  # does not raise
    assert tok.source == str(sp_path)

    with_step = Tokenizer.load(make_tiny_sentencepiece(sp_path.parent / "step", with_step=True))
    assert with_step.step_id == with_step.vocab_size - 1 and with_step.id_to_piece(with_step.step_id) == "<step>"


def test_encode_adds_dummy_prefix_and_encode_infilling_does_not(sp_tok):
    space = sp_tok.piece_to_id("▁")
    newline = sp_tok.piece_to_id("<0x0A>")
    assert space is not None and newline is not None
    # Ordinary encoding of text starting with a newline begins with the lone "▁" (id 29871 in Llama).
    assert sp_tok.encode(REF_SUFFIX)[:2] == [space, newline]
    # The suffix of an infilling prompt starts with the newline itself: no stray space token.
    suffix_ids = sp_tok.encode_infilling(REF_SUFFIX)
    assert suffix_ids[0] == newline
    assert suffix_ids == sp_tok.encode(REF_SUFFIX)[1:]
    # A prefix ending in a space keeps its trailing "▁" token, as in the reference token stream.
    assert sp_tok.encode(REF_PREFIX)[-1] == space
    assert sp_tok.id_to_piece(sp_tok.encode(REF_PREFIX)[0]) == "▁def"
    # Words: "▁def" when encoded ordinarily, "def" without the dummy prefix.
    assert sp_tok.id_to_piece(sp_tok.encode_infilling("def f")[0]) == "def"
    # Text that starts with spaces keeps exactly those spaces.
    for text in ["  x = 1", " y", "\tz"]:
        pieces = "".join(sp_tok.id_to_piece(i) for i in sp_tok.encode_infilling(text))
        assert pieces == text.replace(" ", "▁").replace("\t", "<0x09>")
    assert sp_tok.encode_infilling("") == [] and sp_tok.encode("") == []


def test_encode_infilling_equals_reference_sentinel_trick(sp_path, sp_tok):
    # The reference encodes "☺" + text and drops the first two pieces ("▁", "☺").
    raw = spm.SentencePieceProcessor(model_file=str(sp_path))
    assert raw.encode(SENTINEL_PIECE, out_type=str) == ["▁", SENTINEL_PIECE]
    for text in sample_snippets(150, seed=1):
        assert sp_tok.encode_infilling(text) == raw.encode(SENTINEL_PIECE + text)[2:], repr(text)
        assert sp_tok.encode(text) == raw.encode(text), repr(text)


def test_sentencepiece_decode_semantics(sp_tok):
    for text in sample_snippets(150, seed=2):
        assert sp_tok.decode(sp_tok.encode(text)) == text, repr(text)
        assert sp_tok.decode_infilling(sp_tok.encode_infilling(text)) == text, repr(text)
    # A generated middle " foo" arrives as "▁foo": decode drops the space, decode_infilling keeps it.
    ids = sp_tok.encode_infilling(" return x")
    assert sp_tok.decode(ids) == "return x"
    assert sp_tok.decode_infilling(ids) == " return x"
    # Special tokens vanish from decoded text, wherever they are.
    specials = [sp_tok.bos_id, sp_tok.prefix_id, sp_tok.suffix_id, sp_tok.middle_id, sp_tok.eot_id, sp_tok.unk_id]
    body = sp_tok.encode("x = 1")
    assert sp_tok.decode(specials[:2] + body + specials[2:] + [sp_tok.eos_id]) == "x = 1"
    assert sp_tok.decode_infilling([sp_tok.middle_id] + sp_tok.encode_infilling(" y") + [sp_tok.eot_id]) == " y"
    # Tensors and numpy arrays are accepted.
    torch = pytest.importorskip("torch")
    assert sp_tok.decode(torch.tensor(body)) == "x = 1"


def test_literal_infilling_text_is_the_user_defined_piece(sp_tok):
    # SentencePiece matches user-defined pieces inside the (normalized) text; we keep that behaviour.
    assert sp_tok.prefix_id in sp_tok.encode("x <PRE> y")


def test_encode_bos_eos_and_batch(sp_tok):
    body = sp_tok.encode("def f(): pass")
    assert sp_tok.encode("def f(): pass", bos=True, eos=True) == [sp_tok.bos_id] + body + [sp_tok.eos_id]
    texts = sample_snippets(20, seed=3)
    assert sp_tok.encode_batch(texts, bos=True) == [sp_tok.encode(t, bos=True) for t in texts]


# ---- tokenizer.json paths agree with tokenizer.model --------------------------------------------


def test_our_tokenizer_json_matches_sentencepiece(tmp_path, sp_tok):
    sp_tok.save(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    from_json = Tokenizer.load(tmp_path / "out" / "tokenizer.json")
    assert from_json.kind == "bpe"
    for role in ("bos", "eos", "unk", "pad", "prefix", "suffix", "middle", "eot", "step"):
        assert getattr(from_json, f"{role}_id") == getattr(sp_tok, f"{role}_id"), role
    assert from_json.vocab_size == sp_tok.vocab_size
    texts = sample_snippets(200, seed=4) + ["x <PRE> y", "a ▁<SUF>b", "<s>not a bos</s>"]
    _assert_same_encodings(sp_tok, from_json, texts)
    # A directory holding both files loads tokenizer.model (the reference tokenizer).
    assert Tokenizer.load(tmp_path / "out").kind == "sentencepiece"


@pytest.mark.parametrize("tokenizer_class", [None, "CodeLlamaTokenizer"])
def test_transformers_converted_tokenizer_json_matches_sentencepiece(tmp_path, sp_path, sp_tok, tokenizer_class):
    """transformers converts tokenizer.model to a tokenizers pipeline; saved as tokenizer.json and
    loaded by codelm it must give the ids SentencePiece gives, for both encodings. The CodeLlamaTokenizer
    class writes a Metaspace pipeline that drops a leading space: codelm rebuilds it on load."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(sp_path, src / "tokenizer.model")
    if tokenizer_class:
        (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": tokenizer_class}))
    hf = _auto_tokenizer(src)
    hf.save_pretrained(str(tmp_path / "converted"))
    (tmp_path / "converted" / "tokenizer.model").unlink(missing_ok=True)
    from_json = Tokenizer.load(tmp_path / "converted")
    assert from_json.kind == "bpe"
    assert (from_json.bos_id, from_json.eos_id, from_json.unk_id) == (1, 2, 0)
    assert [from_json.prefix_id, from_json.suffix_id, from_json.middle_id, from_json.eot_id] == \
        [sp_tok.prefix_id, sp_tok.suffix_id, sp_tok.middle_id, sp_tok.eot_id]
    texts = sample_snippets(200, seed=5) + [" one", "  two", " \n", REF_PREFIX, REF_SUFFIX]
    _assert_same_encodings(sp_tok, from_json, texts)
    # The infilling prompt pieces come out identical through both paths.
    for tok in (sp_tok, from_json):
        assert tok.encode_infilling(REF_SUFFIX)[0] == tok.piece_to_id("<0x0A>")


def test_sentencepiece_save_loads_in_transformers(tmp_path, sp_tok):
    sp_tok.save(tmp_path / "out")
    hf = _auto_tokenizer(tmp_path / "out")
    for text in sample_snippets(150, seed=6) + ["x <PRE> y"]:
        ids = sp_tok.encode(text, bos=True)
        assert hf.encode(text) == ids, repr(text)
        assert hf.decode(ids, skip_special_tokens=True) == sp_tok.decode(ids), repr(text)
    assert hf.bos_token_id == sp_tok.bos_id and hf.eos_token_id == sp_tok.eos_id
    config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert config["prefix_token"] == "▁<PRE>" and config["eot_token"] == "▁<EOT>"
    assert not list((tmp_path / "out").glob("*.tmp"))


# ---- our byte-level BPE ---------------------------------------------------------------------------


def test_train_bpe_special_ids():
    tok = make_tiny_bpe()
    assert tok.kind == "bpe"
    assert [tok.id_to_piece(i) for i in range(len(SPECIAL_TOKENS))] == list(SPECIAL_TOKENS)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    assert (tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id, tok.step_id) == (4, 5, 6, 7, None)
    assert 264 < tok.vocab_size <= 1000
    tok.require_infilling()


BPE_AWKWARD = [
    "", " ", "\t\t  \t", "\n\n\n", "    " * 10 + "deep", "a  b   c    d", "\r\n\r\n", "x\u00a0y\u2028z",
    "é 中文 😀 ∑ 🧑‍💻", "\x00\x01\x7f", "x = '▁'", "<s></s><pad><PRE><SUF><MID><EOT><unk>", "</s>",
    "0123456789" * 3, "if x:\n\tpass\n", "  leading", "trailing  ", "\ufeffBOM",
]


def test_bpe_round_trip_is_exact():
    tok = make_tiny_bpe()
    for text in BPE_AWKWARD + sample_snippets(200, seed=7):
        ids = tok.encode(text)
        assert tok.decode(ids) == text, repr(text)
        assert tok.encode_infilling(text) == ids  # no dummy prefix in a byte-level BPE
        assert tok.decode_infilling(ids) == text
    whole = "".join(stdlib_corpus()[:3])
    assert tok.decode(tok.encode(whole)) == whole


def test_bpe_treats_special_strings_in_text_as_text():
    tok = make_tiny_bpe()
    ids = tok.encode("<s>x</s> <PRE><SUF><MID><EOT><pad><unk>")
    assert not set(ids) & set(range(len(SPECIAL_TOKENS)))
    assert tok.encode("x", bos=True, eos=True) == [1] + tok.encode("x") + [2]


def test_bpe_splits_digits_and_compresses_code():
    tok = make_tiny_bpe()
    digits = tok.encode("x = 31415926")
    assert [tok.id_to_piece(i) for i in digits[-8:]] == list("31415926")
    text = "".join(stdlib_corpus()[:2])
    assert len(tok.encode(text)) < len(text.encode("utf-8")) / 2  # merges learned something useful
    # Indentation after a newline is learned as a token of its own.
    assert any(tok.id_to_piece(i) == "Ċ" + "Ġ" * 7 for i in tok.encode("x\n        y"))


def test_bpe_save_load_and_transformers(tmp_path):
    tok = make_tiny_bpe()
    tok.save(tmp_path / "bpe")
    assert sorted(p.name for p in (tmp_path / "bpe").iterdir()) == [
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    again = Tokenizer.load(tmp_path / "bpe")
    assert again.source == str(tmp_path / "bpe" / "tokenizer.json")
    texts = BPE_AWKWARD + sample_snippets(100, seed=8)
    for text in texts:
        assert again.encode(text) == tok.encode(text)
    assert (again.pad_id, again.prefix_id, again.eot_id) == (3, 4, 7)
    hf = _auto_tokenizer(tmp_path / "bpe")
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (1, 2, 3, 0)
    for text in texts:
        ids = tok.encode(text, bos=True)
        assert hf.decode(ids, skip_special_tokens=True) == text, repr(text)
        # transformers matches special-token strings inside text unless told not to; we never do.
        assert hf.encode(text, split_special_tokens=True) == ids, repr(text)
        if not any(s in text for s in SPECIAL_TOKENS):
            assert hf.encode(text) == ids, repr(text)


def test_save_replaces_a_stale_sentencepiece_model(tmp_path, sp_path):
    target = tmp_path / "dir"
    Tokenizer.load(sp_path).save(target)
    make_tiny_bpe().save(target)
    assert not (target / "tokenizer.model").exists()
    assert Tokenizer.load(target).prefix_id == 4


def test_pickle_round_trip(sp_tok):
    for tok in (sp_tok, make_tiny_bpe()):
        copy = pickle.loads(pickle.dumps(tok))
        for text in sample_snippets(30, seed=9):
            assert copy.encode(text) == tok.encode(text)
            assert copy.encode_infilling(text) == tok.encode_infilling(text)
        assert copy.source == tok.source and copy.kind == tok.kind


def test_train_vocab_too_small():
    with pytest.raises(ConfigError, match="vocab_size 100 is too small"):
        train_tokenizer(["x = 1"], 100, show_progress=False)


# ---- bad input --------------------------------------------------------------------------------------


def _one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert isinstance(excinfo.value, CodelmError)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_tokenizer(tmp_path):
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(tmp_path / "nope")
    _one_line_error(e, str(tmp_path / "nope"), "not found")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(tmp_path / "empty")
    _one_line_error(e, str(tmp_path / "empty"), "no tokenizer.model or tokenizer.json")


def test_corrupt_tokenizer_model(tmp_path, sp_path):
    bad = tmp_path / "bad" / "tokenizer.model"
    bad.parent.mkdir()
    bad.write_bytes(sp_path.read_bytes()[:200])  # truncated
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(bad.parent)
    _one_line_error(e, str(bad), "SentencePiece")
    bad.write_bytes(b"")
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(bad)
    _one_line_error(e, str(bad))


def test_corrupt_model_beside_a_good_json_falls_back_with_warning(tmp_path):
    make_tiny_bpe().save(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.warns(UserWarning, match="tokenizer.json instead"):
        tok = Tokenizer.load(tmp_path)
    assert tok.kind == "bpe" and tok.prefix_id == 4


def test_corrupt_tokenizer_json(tmp_path):
    make_tiny_bpe().save(tmp_path)
    path = tmp_path / "tokenizer.json"
    good = path.read_text()
    path.write_text(good[: len(good) // 2])
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(tmp_path)
    _one_line_error(e, str(path), "not a readable tokenizer.json")
    path.write_text('{"hello": 1}')
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(path)
    _one_line_error(e, str(path))
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(path)
    _one_line_error(e, str(path))


def test_tokenizer_json_without_bos(tmp_path):
    make_tiny_bpe().save(tmp_path)
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in ("<s>",)]
    del spec["model"]["vocab"]["<s>"]
    spec["post_processor"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(tmp_path)
    _one_line_error(e, "no BOS or EOS")


def test_config_naming_an_absent_token(tmp_path):
    make_tiny_bpe().save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["bos_token"] = {"content": "<|nothing|>", "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(tmp_path)
    _one_line_error(e, "<|nothing|>")


def test_tokenizer_without_infilling_tokens(tmp_path):
    tok = Tokenizer.load(make_tiny_sentencepiece(tmp_path, with_fim=False))
    assert (tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id) == (None, None, None, None)
    assert not tok.has_infilling
    with pytest.raises(TokenizerError) as e:
        tok.require_infilling()
    _one_line_error(e, str(tmp_path / "tokenizer.model"), "no infilling tokens", "▁<PRE>")
    # The same through a tokenizer.json.
    tok.save(tmp_path / "saved")
    (tmp_path / "saved" / "tokenizer.model").unlink()
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(tmp_path / "saved").require_infilling()
    _one_line_error(e, "tokenizer.json", "no infilling tokens")


def test_ids_outside_the_vocabulary(sp_tok):
    for tok in (sp_tok, make_tiny_bpe()):
        with pytest.raises(TokenizerError) as e:
            tok.decode([5, tok.vocab_size])
        _one_line_error(e, f"token id {tok.vocab_size}")
        with pytest.raises(TokenizerError):
            tok.id_to_piece(-1)


DIALOGS = [
    [{"role": "user", "content": "Write a function that adds two numbers."}],
    [{"role": "system", "content": "Answer in Python."}, {"role": "user", "content": "  Reverse a list.  "}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " def f(): pass "},
     {"role": "user", "content": "again\n\twith a tab"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "é 中文"},
     {"role": "assistant", "content": "ok"}, {"role": "user", "content": "1 + 2?"}],
]


def test_saved_chat_template_lays_dialogs_out_like_codelm(tmp_path):
    """vLLM's and transformers' chat routes render tokenizer_config.json's template: token for token the
    prompt `codelm chat` builds (codelm.generate.prompts.chat_tokens)."""
    from transformers import AutoTokenizer

    from codelm.generate.prompts import chat_tokens

    tok = make_tiny_bpe()
    tok.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    for messages in DIALOGS:
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert hf(text, add_special_tokens=False)["input_ids"] == chat_tokens(tok, messages), messages
    with pytest.raises(Exception, match="alternate"):
        hf.apply_chat_template([{"role": "assistant", "content": "x"}], tokenize=False)

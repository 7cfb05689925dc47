"""Packing: the token file, whole FIM examples, resumable builds, the seeded mixed stream."""
import json
from collections import Counter

import numpy as np
import pytest

from codelm.data.fim import FimSettings
from codelm.data.packing import (IGNORE_INDEX, MixedStream, Packer, TokenFile, build_token_file, make_batch,
                                 read_meta, split_document, token_dtype)
from codelm.errors import DataError
from tests.helpers import make_tiny_bpe, stdlib_corpus

L = 128


@pytest.fixture(scope="module")
def tok():
    return make_tiny_bpe()


def _texts(n=None):
    """Documents of 1-6 KB cut from standard-library source (about 75 of them)."""
    text = "".join(stdlib_corpus())
    rng = np.random.default_rng(0)
    out, pos = [], 0
    while pos < len(text):
        size = int(rng.integers(1000, 6000))
        out.append(text[pos:pos + size])
        pos += size
    return out[:n]


def test_split_document_pieces_concatenate_back():
    for text in _texts(10):
        pieces = split_document(text, 500)
        assert "".join(pieces) == text
        assert all(len(p) <= 500 or "\n\n" not in p.strip("\n") for p in pieces)
    assert split_document("short", 500) == ["short"]
    assert split_document("x" * 900, None) == ["x" * 900]


def test_packer_never_cuts_a_whole_example_and_loses_nothing():
    rng = np.random.default_rng(0)
    packer = Packer(seq_len=32, pad_id=-1, max_waiting=4)
    stream, wholes, plain = [], [], []
    next_id = 0
    for _ in range(400):
        n = int(rng.integers(1, 32 if rng.random() < 0.8 else 90))
        whole = n <= 32 and rng.random() < 0.8
        ids = list(range(next_id, next_id + n))
        next_id += n
        (wholes if whole else plain).append(ids)
        stream += packer.add(ids, whole)
    stream += packer.finish()
    arr = np.array(stream)
    assert (len(arr) - 1) % 32 == 0 and arr[-1] == -1
    where = {int(t): i for i, t in enumerate(arr) if t >= 0}
    assert len(where) == next_id                      # every token exactly once
    for ids in wholes:
        first, last = where[ids[0]], where[ids[-1]]
        assert last - first == len(ids) - 1           # contiguous
        assert first // 32 == last // 32              # inside one window
    for ids in plain:                                 # plain text keeps its order
        pos = [where[t] for t in ids]
        assert pos == sorted(pos)
    assert packer.pad_tokens == int((arr == -1).sum())


def test_token_file_keeps_fim_examples_inside_sequences(tmp_path, tok):
    meta = build_token_file(_texts(40), tok, tmp_path / "t.bin", L, fim=FimSettings(rate=0.9),
                            max_document_chars=300, show_progress=False)
    assert meta.complete and meta.dtype == "uint16" and meta.n_sequences == (meta.n_tokens - 1) // L
    assert meta.kinds["psm"] > 50 and meta.kinds["spm"] > 50
    assert meta.pad_tokens < 0.05 * meta.n_tokens
    f = TokenFile(tmp_path / "t.bin")
    assert len(f) == meta.n_sequences
    for k in range(len(f)):
        seq = f.sequence(k)[:-1].tolist()           # the L input tokens of sequence k
        # Every FIM example that starts in this sequence ends in it: PRE ... EOT balanced.
        opened = 0
        for t in seq:
            if t == tok.prefix_id:
                assert opened == 0
                opened = 1
            elif t == tok.eot_id:
                assert opened == 1
                opened = 0
        assert opened == 0
        assert seq.count(tok.suffix_id) == seq.count(tok.middle_id) == seq.count(tok.prefix_id)
    x, y = make_batch([f.sequence(0), f.sequence(1)], f.pad_id)
    assert x.shape == y.shape == (2, L)
    assert (x[:, 1:] == y[:, :-1]).all()


def test_pad_targets_are_ignored():
    rows = [np.array([1, 5, 6, 3, 3]), np.array([1, 7, 3, 8, 9])]
    x, y = make_batch(rows, pad_id=3)
    assert y.tolist() == [[5, 6, IGNORE_INDEX, IGNORE_INDEX], [7, IGNORE_INDEX, 8, 9]]
    assert x.tolist() == [[1, 5, 6, 3], [1, 7, 3, 8]]


def test_dtype_follows_the_vocabulary():
    assert token_dtype(32016) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


class _Killed(Exception):
    pass


def _dying(texts, after):
    for i, t in enumerate(texts):
        if i == after:
            raise _Killed()
        yield t


def test_interrupted_build_resumes_to_the_same_file(tmp_path, tok):
    texts = _texts(30)
    kw = dict(seq_len=L, fim=FimSettings(rate=0.9, seed=2), max_document_chars=400, show_progress=False)
    build_token_file(texts, tok, tmp_path / "whole.bin", save_every=4, **kw)
    with pytest.raises(_Killed):
        build_token_file(_dying(texts, 17), tok, tmp_path / "part.bin", save_every=4, **kw)
    assert (tmp_path / "part.bin.partial").exists() and not (tmp_path / "part.bin").exists()
    progress = json.loads((tmp_path / "part.bin.progress.json").read_text())
    assert progress["docs_done"] == 16
    meta = build_token_file(texts, tok, tmp_path / "part.bin", save_every=4, **kw)
    assert (tmp_path / "part.bin").read_bytes() == (tmp_path / "whole.bin").read_bytes()
    assert meta.kinds == read_meta(tmp_path / "whole.bin").kinds
    assert not (tmp_path / "part.bin.progress.json").exists()


def test_built_files_are_reused_until_settings_change(tmp_path, tok):
    texts = _texts(5)
    build_token_file(texts, tok, tmp_path / "a.bin", L, fim=None, show_progress=False)
    stamp = (tmp_path / "a.bin").stat().st_mtime_ns
    build_token_file(texts, tok, tmp_path / "a.bin", L, fim=None, show_progress=False)
    assert (tmp_path / "a.bin").stat().st_mtime_ns == stamp
    meta = build_token_file(texts, tok, tmp_path / "a.bin", L, fim=FimSettings(), show_progress=False)
    assert meta.settings["fim"] is not None and (tmp_path / "a.bin").stat().st_mtime_ns != stamp


def test_empty_input_is_a_clear_error(tmp_path, tok):
    with pytest.raises(DataError, match="no documents"):
        build_token_file([], tok, tmp_path / "e.bin", L, show_progress=False)


def _file(tmp_path, tok, name, texts):
    build_token_file(texts, tok, tmp_path / f"{name}.bin", 32, fim=None, show_progress=False)
    return TokenFile(tmp_path / f"{name}.bin")


def test_stream_epochs_mixing_and_resume(tmp_path, tok):
    a = _file(tmp_path, tok, "a", _texts(3))
    b = _file(tmp_path, tok, "b", _texts(6)[3:])
    stream = MixedStream([a, b], [3.0, 1.0], seed=5)
    picks = stream.draw(4000)
    share_a = sum(s == 0 for s, _ in picks) / len(picks)
    assert abs(share_a - 0.75) < 0.03
    # Each source is visited in a permutation per epoch: the first len(a) draws from a cover it once.
    from_a = [k for s, k in picks if s == 0]
    assert sorted(from_a[:len(a)]) == list(range(len(a)))
    assert Counter(from_a[:3 * len(a)]) == Counter({k: 3 for k in range(len(a))})
    # Resume: a stream restored from a position continues exactly as the original.
    s1 = MixedStream([a, b], [3.0, 1.0], seed=5)
    s1.draw(123)
    state = json.loads(json.dumps(s1.state_dict()))
    s2 = MixedStream([a, b], [3.0, 1.0], seed=5)
    s2.load_state_dict(state)
    assert s1.draw(300) == s2.draw(300) == picks[123:423]
    assert MixedStream([a, b], [3.0, 1.0], seed=6).draw(50) != picks[:50]


def test_eos_padding_keeps_each_documents_eos_as_a_target():
    # Llama's SentencePiece has no pad token: packing pads with EOS (2). The document's own EOS
    # (after a real token) must stay a target; only EOS after EOS is padding.
    import numpy as np

    from codelm.data.packing import IGNORE_INDEX, make_batch

    row = np.array([1, 50, 51, 2, 2, 2, 1, 60])
    x, y = make_batch([row], pad_id=2, pad_is_eos=True)
    assert y.tolist() == [[50, 51, 2, IGNORE_INDEX, IGNORE_INDEX, 1, 60]]
    x, y = make_batch([np.array([1, 50, 3, 3, 1])], pad_id=3)  # a real pad token: every pad target ignored
    assert y.tolist() == [[50, IGNORE_INDEX, IGNORE_INDEX, 1]]

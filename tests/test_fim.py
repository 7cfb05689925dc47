"""The FIM transform: the paper's rates and rules, exact inverses, and the inference prompt layouts."""
from collections import Counter

import numpy as np
import pytest

from codelm.data.fim import (FIM_MARGIN, LONG, PLAIN, PSM, SPM, FimSettings, decode_example, encode_document,
                             fim_split, require_fim_tokens, split_points)
from codelm.errors import ConfigError, TokenizerError
from codelm.generate.prompts import infilling_tokens
from codelm.tokenizer import Tokenizer
from tests.helpers import make_tiny_bpe, make_tiny_sentencepiece, sample_snippets, stdlib_corpus

SEQ_LEN = 512


@pytest.fixture(scope="module")
def tok():
    return make_tiny_bpe()


def _docs(n, seed=0):
    """n short documents: random slices of standard-library source (all fit one context)."""
    rng = np.random.default_rng(seed)
    texts = stdlib_corpus()
    out = []
    for _ in range(n):
        t = texts[rng.integers(len(texts))]
        start = int(rng.integers(len(t) - 400))
        out.append(t[start:start + int(rng.integers(20, 400))])
    return out


def test_rate_and_psm_spm_split(tok):
    docs = _docs(4000)
    kinds = Counter(encode_document(d, tok, i, SEQ_LEN, FimSettings(seed=3)).kind for i, d in enumerate(docs))
    assert kinds[LONG] == 0
    transformed = kinds[PSM] + kinds[SPM]
    # Binomial(4000, 0.9): standard deviation 0.0047; 0.02 is over 4 of them.
    assert abs(transformed / len(docs) - 0.9) < 0.02, kinds
    assert abs(kinds[SPM] / transformed - 0.5) < 0.03, kinds     # sd 0.0083
    assert kinds[PLAIN] == len(docs) - transformed


@pytest.mark.parametrize("rate,spm_rate", [(0.0, 0.5), (1.0, 0.0), (1.0, 1.0), (0.5, 0.25)])
def test_other_rates(tok, rate, spm_rate):
    docs = _docs(1000, seed=1)
    kinds = Counter(encode_document(d, tok, i, SEQ_LEN, FimSettings(rate, spm_rate)).kind for i, d in enumerate(docs))
    fim = kinds[PSM] + kinds[SPM]
    assert abs(fim / 1000 - rate) < 0.06
    if fim:
        assert abs(kinds[SPM] / fim - spm_rate) < 0.07


def test_every_example_decodes_back_to_its_document(tok):
    docs = sample_snippets(400, seed=5) + _docs(300, seed=2) + ["<PRE> <SUF> <MID> <EOT> </s> <s> <pad>"]
    seen = Counter()
    for i, d in enumerate(docs):
        enc = encode_document(d, tok, i, SEQ_LEN, FimSettings(rate=0.9))
        seen[enc.kind] += 1
        assert decode_example(enc.ids, tok) == d, (i, enc.kind, d)
    assert seen[PSM] > 100 and seen[SPM] > 100 and seen[PLAIN] > 10


def test_leading_space_rule_with_a_sentencepiece_tokenizer(tmp_path):
    """With a dummy-prefix tokenizer, the suffix and middle must keep their own leading spaces."""
    sp = Tokenizer.load(make_tiny_sentencepiece(tmp_path))
    docs = ["def f(x):\n    return x + 1\n", " leading space", "a  b   c", "x = 1\n\n\ny = 2  # two  spaces\n"]
    docs += sample_snippets(150, seed=9)
    kinds = Counter()
    for i, d in enumerate(docs):
        enc = encode_document(d, sp, i, SEQ_LEN, FimSettings(rate=1.0))
        kinds[enc.kind] += 1
        assert decode_example(enc.ids, sp, enc.kind) == d, (i, enc.kind, repr(d))
    assert kinds[PSM] > 30 and kinds[SPM] > 30
    # Concretely: a middle " x" is encoded without the implicit space, as its own "▁x", where an
    # ordinary encoding would give it two spaces' worth of pieces.
    assert [sp.id_to_piece(i) for i in sp.encode_infilling(" x")] == ["▁x"]
    assert sp.encode(" x") != sp.encode_infilling(" x")


def test_long_documents_are_never_transformed(tok):
    long_docs = [t for t in stdlib_corpus() if len(tok.encode(t)) > SEQ_LEN][:30]
    assert long_docs
    for i, d in enumerate(long_docs):
        enc = encode_document(d, tok, i, SEQ_LEN, FimSettings(rate=1.0))
        assert enc.kind == LONG and enc.ids == [tok.bos_id, *tok.encode(d), tok.eos_id]
    # The boundary: a document whose plain form plus the margin just fits is eligible, one token more is not.
    text = "".join(stdlib_corpus())
    ids = tok.encode(text[:20000])
    for n, expect_eligible in ((SEQ_LEN - FIM_MARGIN - 2, True), (SEQ_LEN - FIM_MARGIN - 1, False)):
        doc = tok.decode(ids[:n])
        n_tokens = len(tok.encode(doc))
        enc = encode_document(doc, tok, 0, SEQ_LEN, FimSettings(rate=1.0))
        assert (enc.kind != LONG) == (n_tokens + 2 + FIM_MARGIN <= SEQ_LEN)
        assert len(enc.ids) <= SEQ_LEN or enc.kind == LONG


def test_deterministic_and_order_independent(tok):
    docs = _docs(50, seed=4)
    a = [encode_document(d, tok, i, SEQ_LEN, FimSettings(seed=7)).ids for i, d in enumerate(docs)]
    b = [encode_document(d, tok, i, SEQ_LEN, FimSettings(seed=7)).ids for i, d in reversed(list(enumerate(docs)))]
    c = [encode_document(d, tok, i, SEQ_LEN, FimSettings(seed=8)).ids for i, d in enumerate(docs)]
    assert a == b[::-1]
    assert a != c


def test_split_points_are_uniform_over_characters():
    rng = np.random.default_rng(0)
    n = 9
    draws = np.array([split_points(n, rng) for _ in range(20000)])
    assert (draws[:, 0] <= draws[:, 1]).all() and draws.min() == 0 and draws.max() == n
    # The two points are independent uniform draws over 0..n, so each value is equally likely overall.
    counts = np.bincount(draws.ravel(), minlength=n + 1) / draws.size
    assert np.abs(counts - 1 / (n + 1)).max() < 0.01
    # ...and the chance of an empty middle is P(a == b) = 1 / (n + 1).
    assert abs((draws[:, 0] == draws[:, 1]).mean() - 1 / (n + 1)) < 0.01
    pre, mid, suf = fim_split("héllo wörld", np.random.default_rng(1))
    assert pre + mid + suf == "héllo wörld"


def _find_psm_and_spm(tok, doc):
    found = {}
    for i in range(200):
        enc = encode_document(doc, tok, i, SEQ_LEN, FimSettings(rate=1.0))
        found.setdefault(enc.kind, (i, enc))
    return found[PSM], found[SPM]


def test_training_layouts_match_the_inference_prompts(tok):
    """A training example is the inference prompt followed by the answer and EOT, token for token."""
    doc = "import os\n\n\ndef main(argv):\n    path = os.path.join(argv[0], 'x')\n    return path\n"
    (i_psm, psm), (i_spm, spm) = _find_psm_and_spm(tok, doc)
    pre, mid, suf = fim_split(doc, _rng_after_draws(0, i_psm))
    prompt = infilling_tokens(tok, pre, suf)
    assert psm.ids == prompt + tok.encode_infilling(mid) + [tok.eot_id]
    pre, mid, suf = fim_split(doc, _rng_after_draws(0, i_spm))
    prompt = infilling_tokens(tok, pre, suf, spm=True)
    head = prompt[:prompt.index(tok.middle_id) + 1]
    assert spm.ids == head + tok.encode(pre + mid) + [tok.eot_id]
    # SPM: the prompt's encode(prefix) is the start of encode(prefix + middle) whenever the prefix
    # ends on a token boundary (the paper: SPM never shows a split sub-token).
    pre, mid, suf = "import os\n", "def main():\n    pass\n", "\nmain()\n"
    assert tok.encode(pre + mid)[:len(tok.encode(pre))] == tok.encode(pre)
    from codelm.data.fim import spm_ids

    assert spm_ids(tok, pre, mid, suf)[:len(infilling_tokens(tok, pre, suf, spm=True))] == \
        infilling_tokens(tok, pre, suf, spm=True)


def _rng_after_draws(seed, index):
    """The generator encode_document uses, advanced past its two decisions (rate, layout)."""
    rng = np.random.default_rng([seed, index])
    rng.random()
    rng.random()
    return rng


def test_settings_and_tokens_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="rate"):
        FimSettings(rate=1.5).check()
    no_fim = Tokenizer.load(make_tiny_sentencepiece(tmp_path, with_fim=False))
    with pytest.raises(TokenizerError, match="prefix_id"):
        require_fim_tokens(no_fim)

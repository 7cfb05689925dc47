"""Shared test fixtures: tiny tokenizers trained in seconds on the standard library, tiny models.

    from helpers import make_tiny_bpe, make_tiny_sentencepiece, tiny_llama

(pytest puts tests/ on sys.path, as the folder has no __init__.py.)

`make_tiny_sentencepiece(tmp_path)` writes a Llama-style SentencePiece BPE model (byte fallback,
digits split, identity normalization, dummy prefix, BOS=1, EOS=2, UNK=0, no pad) whose last pieces
are Code Llama's infilling pieces ▁<PRE>, ▁<SUF>, ▁<MID>, ▁<EOT>, as in the 32,016-piece
vocabulary where they follow the base pieces. `make_tiny_bpe()` returns our byte-level BPE.
Both are cached per process, so many tests can call them cheaply. Ids depend on the Python
version's standard library: never hard-code them, read them from the tokenizer.
"""

from __future__ import annotations

import functools
import json
import io
from pathlib import Path

from codelm.tokenizer import CODE_LLAMA_FIM_PIECES, STEP_PIECE, Tokenizer, stdlib_sample_texts, train_tokenizer

# A piece Llama's vocabulary has and the reference's encode_infilling trick relies on.
SENTINEL_PIECE = "☺"


@functools.lru_cache(maxsize=None)
def stdlib_corpus(max_chars: int = 300_000) -> tuple[str, ...]:
    """Python source from the standard library (a tuple, so callers cannot mutate the cache)."""
    return tuple(stdlib_sample_texts(max_chars))


@functools.lru_cache(maxsize=None)
def _sentencepiece_base_model(vocab_size: int) -> bytes:
    import sentencepiece as spm

    lines = [line for text in stdlib_corpus() for line in text.splitlines()]
    out = io.BytesIO()
    # Settings of Llama's tokenizer.model (SentencePiece BPE trained on lines, so "\n" is a byte piece).
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, model_type="bpe", vocab_size=vocab_size,
        character_coverage=0.99995, byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", add_dummy_prefix=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
        max_sentence_length=1 << 20, hard_vocab_limit=False,
    )
    return out.getvalue()


@functools.lru_cache(maxsize=None)
def _sentencepiece_model(vocab_size: int, with_fim: bool, with_step: bool) -> bytes:
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(_sentencepiece_base_model(vocab_size))
    Piece = pb.ModelProto.SentencePiece
    lowest = min(p.score for p in proto.pieces if p.type == Piece.NORMAL)
    sentinel = proto.pieces.add()  # a plain single-character piece, never merged with anything
    sentinel.piece, sentinel.score, sentinel.type = SENTINEL_PIECE, lowest - 1.0, Piece.NORMAL
    extra = (list(CODE_LLAMA_FIM_PIECES) if with_fim else []) + ([STEP_PIECE] if with_step else [])
    for text in extra:
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text, 0.0, Piece.USER_DEFINED
    return proto.SerializeToString()


def make_tiny_sentencepiece(tmp_dir, with_fim: bool = True, vocab_size: int = 1000,
                            with_step: bool = False) -> Path:
    """Write a tiny Code-Llama-like tokenizer.model into `tmp_dir` and return its path.
    vocab_size counts the trained pieces (at least about 400: bytes + characters); the sentinel
    "☺" and the infilling pieces (and "<step>" if asked) come on top, in that order."""
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    path = tmp_dir / "tokenizer.model"
    path.write_bytes(_sentencepiece_model(vocab_size, with_fim, with_step))
    return path


@functools.lru_cache(maxsize=None)
def make_tiny_bpe(vocab_size: int = 1000) -> Tokenizer:
    """Our byte-level BPE (specials <unk> <s> </s> <pad> <PRE> <SUF> <MID> <EOT> at ids 0-7),
    trained on the standard library. Shared between callers: treat it as read-only."""
    return train_tokenizer(stdlib_corpus(), vocab_size, show_progress=False)


def sample_snippets(n: int = 200, seed: int = 0, max_len: int = 400) -> list[str]:
    """Random slices of standard-library source plus hand-picked awkward texts (leading spaces,
    tabs, newlines, unicode, empty)."""
    import random

    rng = random.Random(seed)
    texts = stdlib_corpus()
    out = ["", " ", "  ", "\n", "\t", " x", "  two spaces", "\n    return result\n", "a  b   c\t\td",
           "é 中文 😀 ∑\t1234567890", "\r\n", "trailing space ", "\u00a0nbsp"]
    while len(out) < n:
        text = rng.choice(texts)
        start = rng.randrange(len(text))
        out.append(text[start:start + rng.randrange(1, max_len)])
    return out


def tiny_llama(vocab_size: int, seed: int = 0, max_seq_len: int = 512, **config):
    """A randomly initialised 2-layer Llama (dim 64, GQA 4/2) in eval mode, the same weights for a seed."""
    import torch

    from codelm.model.config import ModelConfig
    from codelm.model.llama import Transformer

    torch.manual_seed(seed)
    return Transformer(ModelConfig(**{"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 16,
                                      "vocab_size": vocab_size, "max_seq_len": max_seq_len, **config})).eval()


def write_jsonl(path, rows) -> None:
    """A JSONL file of rows (samples, problems) for a test."""
    Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows))


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]

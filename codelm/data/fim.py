"""The fill-in-the-middle transform of Code Llama (paper §2.3), exactly.

Per document, independently:

* With probability `rate` (0.9) the document is transformed, but only if it fits
  in one training context (a longer one is cut across contexts by packing and
  stays a plain left-to-right document).
* The two split points are drawn independently and uniformly over the
  document's characters (positions 0..len, so any part may be empty); the
  document is prefix + middle + suffix.
* Half of the transformed documents (`spm_rate`) use the SPM layout, the rest PSM.
* The leading-space rule: the paper suppresses the implicit leading space that a
  SentencePiece tokenizer adds when encoding the middle and the suffix, so they
  are encoded with `encode_infilling`. codelm's own byte-level BPE adds no
  implicit space, so for it `encode_infilling` is `encode` and the rule changes
  nothing; a SentencePiece tokenizer (Llama 2's) goes through the same calls.
* In SPM, prefix and middle are concatenated before encoding (the model never
  sees a split sub-token there; in PSM it does, at both split points).

Token layouts, matching the prompts `codelm.generate.infill` builds token for
token (reference doc §2.1: BOS, PRE, ...), with the answer and EOT appended:

    PSM: BOS PRE enc(prefix) SUF enc_infill(suffix) MID enc_infill(middle) EOT
    SPM: BOS PRE SUF enc_infill(suffix) MID enc(prefix + middle) EOT
    plain: BOS enc(document) EOS

Randomness comes from a generator seeded by (seed, document index), so the
result for a document does not depend on the order documents are processed in.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from codelm.errors import ConfigError, TokenizerError

PLAIN, PSM, SPM, LONG = "plain", "psm", "spm", "long"
# How many more tokens a transformed document may take than the plain one
# before the draw: three sentinels, plus sub-tokens broken at the split points.
# Eligibility is decided on the plain length so the draw is not biased by it;
# the rare transform that still does not fit is kept plain and counted.
FIM_MARGIN = 8


@dataclass(frozen=True)
class FimSettings:
    rate: float = 0.9        # probability that an eligible document is transformed
    spm_rate: float = 0.5    # share of transformed documents in SPM layout
    seed: int = 0

    def check(self, where: str = "fim") -> None:
        for name in ("rate", "spm_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{where}: {name} must be between 0 and 1, got {v}")


def split_points(n_chars: int, rng: np.random.Generator) -> tuple[int, int]:
    """Two character positions drawn independently and uniformly from 0..n_chars, sorted."""
    a, b = rng.integers(0, n_chars + 1, size=2)
    return (int(a), int(b)) if a <= b else (int(b), int(a))


def fim_split(text: str, rng: np.random.Generator) -> tuple[str, str, str]:
    """(prefix, middle, suffix) with prefix + middle + suffix == text."""
    i, j = split_points(len(text), rng)
    return text[:i], text[i:j], text[j:]


def require_fim_tokens(tokenizer) -> None:
    missing = [n for n in ("bos_id", "eos_id", "prefix_id", "suffix_id", "middle_id", "eot_id")
               if getattr(tokenizer, n, None) is None]
    if missing:
        raise TokenizerError(f"the tokenizer has no {', '.join(missing)}: FIM training needs "
                             "<s>, </s>, <PRE>, <SUF>, <MID> and <EOT> (set data.fim_rate = 0 to train without)")


def plain_ids(tokenizer, text: str) -> list[int]:
    return [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]


def psm_ids(tokenizer, prefix: str, middle: str, suffix: str) -> list[int]:
    t = tokenizer
    return [t.bos_id, t.prefix_id, *t.encode(prefix), t.suffix_id, *t.encode_infilling(suffix),
            t.middle_id, *t.encode_infilling(middle), t.eot_id]


def spm_ids(tokenizer, prefix: str, middle: str, suffix: str) -> list[int]:
    t = tokenizer
    return [t.bos_id, t.prefix_id, t.suffix_id, *t.encode_infilling(suffix), t.middle_id,
            *t.encode(prefix + middle), t.eot_id]


@dataclass
class EncodedDocument:
    ids: list[int]
    kind: str          # PLAIN (eligible, not drawn), PSM, SPM, or LONG (does not fit one context)
    overflow: bool = False   # drawn for FIM but the transformed form did not fit: kept plain

    @property
    def whole(self) -> bool:
        """Must the packer keep it inside one context? (Only transformed documents must.)"""
        return self.kind in (PSM, SPM)


def encode_document(text: str, tokenizer, index: int, seq_len: int,
                    fim: FimSettings | None) -> EncodedDocument:
    """The training tokens of document number `index` (its FIM draw is seeded by (seed, index))."""
    plain = plain_ids(tokenizer, text)
    if len(plain) + FIM_MARGIN > seq_len:
        return EncodedDocument(plain, LONG)
    if fim is None or fim.rate <= 0.0:
        return EncodedDocument(plain, PLAIN)
    rng = np.random.default_rng([fim.seed, index])
    # Always draw all four numbers, so each decision has its own fixed place in the stream.
    transform = rng.random() < fim.rate
    use_spm = rng.random() < fim.spm_rate
    prefix, middle, suffix = fim_split(text, rng)
    if not transform:
        return EncodedDocument(plain, PLAIN)
    ids = (spm_ids if use_spm else psm_ids)(tokenizer, prefix, middle, suffix)
    if len(ids) > seq_len:
        return EncodedDocument(plain, PLAIN, overflow=True)
    return EncodedDocument(ids, SPM if use_spm else PSM)


def decode_example(ids: list[int], tokenizer, kind: str | None = None) -> str:
    """The document a training example was made from (inverse of encode_document).

    `kind` (PSM or SPM) settles the one ambiguous case: a PSM example with an empty prefix has
    the SPM layout. The two readings differ only for a tokenizer with an implicit leading space
    (SentencePiece), where the last part is encode_infilling'd in PSM and encode'd in SPM.
    """
    t = tokenizer
    ids = list(ids)
    if ids and ids[0] == t.bos_id:
        ids = ids[1:]
    if not ids or ids[0] != t.prefix_id:
        if ids and ids[-1] == t.eos_id:
            ids = ids[:-1]
        return t.decode(ids)
    if ids[-1] != t.eot_id:
        raise ValueError("a FIM example must end with EOT")
    body = ids[1:-1]
    suf = body.index(t.suffix_id)
    mid = body.index(t.middle_id, suf)
    if kind is None:
        kind = SPM if suf == 0 else PSM
    suffix = t.decode_infilling(body[suf + 1:mid])
    if kind == SPM:
        return t.decode(body[mid + 1:]) + suffix
    prefix = t.decode(body[:suf])
    middle = t.decode_infilling(body[mid + 1:])
    return prefix + middle + suffix

"""Prompt token layouts for completion and infilling (reference doc §2.1), token-exact with Meta's.

PSM: BOS, PRE, encode(prefix), SUF, encode_infilling(suffix), MID      -> model writes the middle, then EOT
SPM: BOS, PRE, SUF, encode_infilling(suffix), MID, encode(prefix)      -> model continues the prefix, then EOT

encode() adds SentencePiece's implicit leading space; encode_infilling() does not, because the suffix
(and, in training, the middle) continues text mid-line. For codelm's byte-level BPE both are the same.
"""
from __future__ import annotations

FILL_MARKER = "<FILL>"


def completion_tokens(tokenizer, prompt: str) -> list[int]:
    return tokenizer.encode(prompt, bos=True)


def infilling_tokens(tokenizer, prefix: str, suffix: str, spm: bool = False) -> list[int]:
    tokenizer.require_infilling()
    t = tokenizer
    if spm:
        return [t.bos_id, t.prefix_id, t.suffix_id] + t.encode_infilling(suffix) + [t.middle_id] + t.encode(prefix)
    return [t.bos_id, t.prefix_id] + t.encode(prefix) + [t.suffix_id] + t.encode_infilling(suffix) + [t.middle_id]


def split_fill(text: str, source: str = "text") -> tuple[str, str]:
    """Split text with exactly one <FILL> marker into (prefix, suffix)."""
    n = text.count(FILL_MARKER)
    if n != 1:
        from codelm.errors import CodelmError

        raise CodelmError(f"{source}: expected exactly one {FILL_MARKER} marker, found {n}")
    prefix, suffix = text.split(FILL_MARKER)
    return prefix, suffix

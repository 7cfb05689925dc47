"""Prompt token layouts for completion and infilling (reference doc §2.1), token-exact with Meta's.

PSM: BOS, PRE, encode(prefix), SUF, encode_infilling(suffix), MID      -> model writes the middle, then EOT
SPM: BOS, PRE, SUF, encode_infilling(suffix), MID, encode(prefix)      -> model continues the prefix, then EOT

encode() adds SentencePiece's implicit leading space; encode_infilling() does not, because the suffix
(and, in training, the middle) continues text mid-line. For codelm's byte-level BPE both are the same.
"""
from __future__ import annotations

from codelm.data.dialogs import (B_INST, B_SYS, CONTROL_TAGS, E_INST, E_SYS, UNSAFE_MESSAGE,  # noqa: F401
                                 ChatFormatError, check_dialog, dialog_tokens)
from codelm.errors import CodelmError

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
        raise CodelmError(f"{source}: expected exactly one {FILL_MARKER} marker, found {n}")
    prefix, suffix = text.split(FILL_MARKER)
    return prefix, suffix


# ------------------------------------------------------------------- chat
# The [INST] layout lives with the training data (codelm.data.dialogs): one layout for both.
def chat_tokens(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt tokens for the next assistant turn. Uses the 70B "Source: … <step>" layout when the
    tokenizer has `<step>`, the [INST] layout otherwise."""
    check_dialog(messages)
    if tokenizer.step_id is not None:
        return _step_chat_tokens(tokenizer, messages)
    return dialog_tokens(tokenizer, messages, open_turn=True)[0]


def _step_chat_tokens(tokenizer, messages: list[dict]) -> list[int]:
    msgs = list(messages)
    if msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": ""}] + msgs  # the 70B layout always opens with a system turn
    out = [tokenizer.bos_id]
    for m in msgs:
        header = f" Source: {m['role'].strip()}"
        if m.get("destination"):
            header += f"\nDestination: {m['destination'].strip()}"
        out += tokenizer.encode(header)
        if m["content"].strip():
            out += tokenizer.encode("\n\n " + m["content"].strip())
        out.append(tokenizer.step_id)
    out += tokenizer.encode(" Source: assistant\nDestination: user")
    out += tokenizer.encode("\n\n ")
    return out


def chat_stop_ids(tokenizer) -> set[int]:
    """The reference stops a chat reply at EOS, or at <step> in the 70B layout."""
    return {tokenizer.step_id} if tokenizer.step_id is not None else {tokenizer.eos_id}

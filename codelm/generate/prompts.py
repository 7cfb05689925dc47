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


# ------------------------------------------------------------------- chat
# Llama 2 / Code Llama - Instruct layout (reference doc §4.1):
#   <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user1} [/INST] {answer1} </s><s>[INST] {user2} [/INST]
# Each finished exchange is encoded as one text with BOS and EOS; the open user turn with BOS only.
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
CONTROL_TAGS = ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "<step>")
UNSAFE_MESSAGE = "Error: special tags are not allowed as part of the prompt."


class ChatFormatError(ValueError):
    """A dialog the instruct layout cannot express (roles out of order, control tags in the text)."""


def check_dialog(messages: list[dict]) -> None:
    if not messages:
        raise ChatFormatError("empty dialog")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ChatFormatError(f"message {i}: role must be system, user or assistant")
        if not isinstance(m.get("content"), str):
            raise ChatFormatError(f"message {i}: content must be a string")
        # The reference refuses any prompt carrying its control tags: they would let user text
        # forge turns or a system prompt.
        if any(tag in m["content"] for tag in CONTROL_TAGS):
            raise ChatFormatError(f"message {i}: {UNSAFE_MESSAGE}")


def chat_tokens(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt tokens for the next assistant turn. Uses the 70B "Source: … <step>" layout when the
    tokenizer has `<step>`, the [INST] layout otherwise."""
    check_dialog(messages)
    if tokenizer.step_id is not None:
        return _step_chat_tokens(tokenizer, messages)
    msgs = [dict(m) for m in messages]
    if msgs[0]["role"] == "system":
        if len(msgs) < 2:
            raise ChatFormatError("a system message must be followed by a user message")
        msgs = [{"role": msgs[1]["role"], "content": B_SYS + msgs[0]["content"] + E_SYS + msgs[1]["content"]}] \
            + msgs[2:]
    for i, m in enumerate(msgs):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise ChatFormatError(f"roles must alternate user/assistant starting with user (system optional "
                                  f"first); turn {i} is {m['role']}")
    if msgs[-1]["role"] != "user":
        raise ChatFormatError("the last message must be from the user")
    out: list[int] = []
    for user, answer in zip(msgs[:-1:2], msgs[1::2]):
        out += tokenizer.encode(f"{B_INST} {user['content'].strip()} {E_INST} {answer['content'].strip()} ",
                                bos=True, eos=True)
    out += tokenizer.encode(f"{B_INST} {msgs[-1]['content'].strip()} {E_INST}", bos=True)
    return out


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

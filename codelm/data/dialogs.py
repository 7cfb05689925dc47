"""The chat layout of Llama 2 / Code Llama - Instruct, one for training and inference (reference doc §4.1):

    <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user1} [/INST] {answer1} </s><s>[INST] {user2} [/INST]

Each finished exchange is encoded as one text with BOS and EOS; an open user turn (the prompt of the
next answer) with BOS only. Training (codelm.data.instruct) and inference (codelm.generate.prompts,
codelm serve, codelm chat) both lay dialogs out with `dialog_tokens`, so the prompt a model sees at
inference is, token for token, the start of what it was trained on.
"""
from __future__ import annotations

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


def _turns(messages: list[dict]) -> list[dict]:
    """The messages with a leading system message folded into the first user turn; roles checked."""
    check_dialog(messages)
    msgs = [dict(m) for m in messages]
    if msgs[0]["role"] == "system":
        if len(msgs) < 2:
            raise ChatFormatError("a system message must be followed by a user message")
        msgs = [{"role": "user", "content": B_SYS + msgs[0]["content"] + E_SYS + msgs[1]["content"]}] + msgs[2:]
    for i, m in enumerate(msgs):
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise ChatFormatError(f"roles must alternate user/assistant starting with user (system optional "
                                  f"first); turn {i} is {m['role']}")
    return msgs


def dialog_tokens(tokenizer, messages: list[dict], open_turn: bool = False) -> tuple[list[int], list[bool]]:
    """(ids, mask) of a dialog in the [INST] layout; mask[i] is True for an assistant token (or the EOS
    that ends an answer), the positions training learns. `open_turn`: the dialog ends with the user,
    whose turn is left open for the next answer (an inference prompt); otherwise it ends with an answer."""
    msgs = _turns(messages)
    if open_turn and msgs[-1]["role"] != "user":
        raise ChatFormatError("the last message must be from the user")
    if not open_turn and msgs[-1]["role"] != "assistant":
        raise ChatFormatError("a training dialog must end with the assistant's answer")
    ids: list[int] = []
    mask: list[bool] = []
    for i in range(0, len(msgs), 2):
        head = f"{B_INST} {msgs[i]['content'].strip()} {E_INST}"
        if i + 1 == len(msgs):  # the open user turn
            ids += tokenizer.encode(head, bos=True)
            mask += [False] * (len(ids) - len(mask))
            break
        full = tokenizer.encode(f"{head} {msgs[i + 1]['content'].strip()} ", bos=True, eos=True)
        n = answer_start(tokenizer.encode(head, bos=True), full)
        ids += full
        mask += [False] * n + [True] * (len(full) - n)
    return ids, mask


def answer_start(head: list[int], full: list[int]) -> int:
    """Where the answer begins in full = encode(prompt + answer), given head = encode(prompt). The
    prompt's tokens usually begin full; where a merge crosses the seam, the answer starts at the
    first token that differs (always leaving at least one token to train)."""
    n = 0
    while n < min(len(head), len(full) - 1) and head[n] == full[n]:
        n += 1
    return n

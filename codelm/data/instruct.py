"""Instruction data: dialogs (or prompt/completion pairs) as (token ids, loss mask), packed whole
into training rows; tag parsing.

A dialog is {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}, roles
alternating user/assistant after an optional system message and ending with the assistant. It is
laid out exactly as `codelm.generate.prompts.chat_tokens` lays out finished exchanges (reference
doc §4.1): one `encode("[INST] {user} [/INST] {answer} ", bos=True, eos=True)` per exchange, the
system message folded into the first user turn. The loss mask is True only on the answer's tokens
and the EOS that closes it: the model learns to answer and to stop, never to write the user's part.
A pair {"prompt": str, "completion": str} is BOS + prompt + completion as plain text, without chat
markup or EOS, trained on the completion only (the length lab's retrieval drills).

Training rows hold L + 1 tokens (L inputs, L shifted targets). A dialog is never split across two
rows: dialogs are placed in order, and one that does not fit what is left of a row starts the next
row, the gap padded (pad targets carry no loss). A dialog longer than a row is left out and counted.
Attention still sees earlier dialogs of the same row, as in any packed training.

A source's `prompt_loss_weight` (recipe; default 0) also trains the rest of each example (prompts,
user turns, chat markup) at that weight: the length lab's drills are code files that hide a key, and
their code is worth learning too.

An instruct token file is NAME.bin (rows of L + 1 ids), NAME.mask.bin (one byte per id: 1 for an
answer's tokens, 2 for the example's other tokens, 0 for padding and each example's BOS) and
NAME.json (settings, counts); rebuilt only when the data, the tokenizer or the settings change.
`MaskedMixedStream` mixes such files with plain token files (rehearsal: the paper's 6% code and 2%
natural language) by recipe weight.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from codelm.data.packing import IGNORE_INDEX, MixedStream, make_batch, token_dtype, tokenizer_fingerprint
from codelm.files import atomic_write_bytes, iter_jsonl
from codelm.errors import ConfigError, DataError
from codelm.data.dialogs import ChatFormatError, answer_start
from codelm.data.dialogs import dialog_tokens as layout_dialog

FORMAT = 2
ANSWER, CONTEXT = 1, 2  # the mask file's token kinds (0: padding, an example's BOS)


# ----------------------------------------------------------------------------- tags
def extract_tagged(text: str, tag: str) -> str | None:
    """The text between the first [TAG] and the [/TAG] after it, or None when either is missing."""
    start = text.find(f"[{tag}]")
    if start < 0:
        return None
    start += len(tag) + 2
    end = text.find(f"[/{tag}]", start)
    return None if end < 0 else text[start:end].strip("\n")


def tagged_program(text: str) -> str | None:
    """The program of a [PYTHON] ... [/PYTHON] answer, when there is one and it parses as Python."""
    code = extract_tagged(text, "PYTHON")
    if code is None or not code.strip():
        return None
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    return code + "\n"


_TEST_HEADER = re.compile(r"^\s*#\s*Test case\s*\d+\s*:?.*$", re.M | re.I)


def parse_tests(text: str) -> list[str]:
    """Unit tests of a [TESTS] block: the code under each "# Test case n:" comment (or, without such
    comments, each top-level statement), kept when it parses and contains an assert."""
    block = extract_tagged(text, "TESTS")
    if block is None:
        return []
    pieces = [p for p in _TEST_HEADER.split(block)]
    if len(pieces) == 1:  # no headers: one test per statement
        try:
            tree = ast.parse(block)
        except SyntaxError:
            return []
        pieces = [ast.get_source_segment(block, node) or "" for node in tree.body]
    tests = []
    for piece in pieces:
        piece = piece.strip("\n")
        if not piece.strip():
            continue
        try:
            tree = ast.parse(piece)
        except SyntaxError:
            continue
        if any(isinstance(node, ast.Assert) for node in ast.walk(tree)):
            tests.append(piece + "\n")
    return tests


# ----------------------------------------------------------------------------- one dialog
def dialog_tokens(tokenizer, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """(ids, mask) of a finished dialog in the [INST] layout that inference uses (codelm.data.dialogs);
    mask[i] is True when ids[i] is an assistant token (or the EOS that ends an answer)."""
    if tokenizer.step_id is not None:
        raise ChatFormatError("instruct training lays dialogs out in the [INST] format; this tokenizer has "
                              "<step> (the 70B 'Source:' layout), which codelm does not train")
    return layout_dialog(tokenizer, messages)


def completion_tokens(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[bool]]:
    """(ids, mask) of a raw prompt/completion pair: BOS + the text as written, no chat markup and no
    EOS (end the completion with whatever should follow it); only the completion's tokens are trained."""
    if not completion:
        raise ChatFormatError("the completion is empty: nothing to train")
    full = tokenizer.encode(prompt + completion, bos=True)
    n = answer_start(tokenizer.encode(prompt, bos=True), full)
    return full, [False] * n + [True] * (len(full) - n)


def read_examples(path: str | Path, tokenizer):
    """Yield (line number, ids, mask) from a JSONL file of {"messages": [...]} dialogs or
    {"prompt": str, "completion": str} pairs; a bad line is an error naming it."""
    path = Path(path)
    for no, rec in iter_jsonl(path):
        try:
            if isinstance(rec.get("messages"), list):
                ids, mask = dialog_tokens(tokenizer, rec["messages"])
            elif isinstance(rec.get("prompt"), str) and isinstance(rec.get("completion"), str):
                ids, mask = completion_tokens(tokenizer, rec["prompt"], rec["completion"])
            else:
                raise DataError(f"{path}:{no}: expected an object with a 'messages' list, or 'prompt' and "
                                "'completion' strings")
        except ChatFormatError as e:
            raise DataError(f"{path}:{no}: {e}") from None
        yield no, ids, mask


# ----------------------------------------------------------------------------- packing
class DialogPacker:
    """Places whole dialogs into rows of `row_len` tokens, in order; pads a row a dialog does not fit."""

    def __init__(self, row_len: int, pad_id: int):
        self.row_len, self.pad_id = row_len, pad_id
        self.ids: list[int] = []
        self.mask: list[bool] = []
        self.pad_tokens = 0

    def _pad_row(self) -> None:
        gap = -len(self.ids) % self.row_len
        self.ids += [self.pad_id] * gap
        self.mask += [False] * gap
        self.pad_tokens += gap

    def add(self, ids: list[int], mask: list[bool]) -> bool:
        """False (and nothing placed) when the dialog is longer than a row."""
        if len(ids) > self.row_len:
            return False
        if len(ids) > self.row_len - len(self.ids) % self.row_len and len(self.ids) % self.row_len:
            self._pad_row()
        kinds = [ANSWER if m else CONTEXT for m in mask]
        if kinds and kinds[0] == CONTEXT:
            kinds[0] = 0  # an example's BOS: nothing before it in the row predicts it
        self.ids += ids
        self.mask += kinds
        return True

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        self._pad_row()
        return np.asarray(self.ids, dtype=np.int64), np.asarray(self.mask, dtype=np.uint8)


@dataclass
class InstructFileMeta:
    format: int
    seq_len: int
    dtype: str
    vocab_size: int
    tokenizer: str
    settings: dict
    dialogs: int = 0
    too_long: int = 0  # dialogs longer than a row: left out
    n_sequences: int = 0
    target_tokens: int = 0  # answer tokens (always trained)
    pad_tokens: int = 0
    context_tokens: int = 0  # the examples' other tokens (trained with a prompt_loss_weight)


def build_instruct_file(source: str | Path, tokenizer, path: str | Path, seq_len: int,
                        settings: dict | None = None) -> InstructFileMeta:
    """Tokenize and pack the dialogs of a JSONL file into an instruct token file (reused when current)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    dtype = token_dtype(tokenizer.vocab_size)
    want = InstructFileMeta(FORMAT, seq_len, np.dtype(dtype).name, tokenizer.vocab_size,
                            tokenizer_fingerprint(tokenizer), {"pad_id": pad_id, **(settings or {})})
    meta_path, mask_path = path.with_suffix(".json"), path.with_suffix(".mask.bin")
    if meta_path.exists() and path.exists() and mask_path.exists():
        have = InstructFileMeta(**json.loads(meta_path.read_text()))
        key = lambda m: (m.format, m.seq_len, m.dtype, m.vocab_size, m.tokenizer, m.settings)  # noqa: E731
        if key(have) == key(want):
            return have
    packer = DialogPacker(seq_len + 1, pad_id)
    meta = want
    for no, ids, mask in read_examples(source, tokenizer):
        if packer.add(ids, mask):
            meta.dialogs += 1
            meta.target_tokens += sum(mask)
        else:
            meta.too_long += 1
    ids, mask = packer.finish()
    if meta.dialogs == 0:
        raise DataError(f"{source}: no dialog fits a row of {seq_len + 1} tokens ({meta.too_long} too long)")
    meta.n_sequences = len(ids) // (seq_len + 1)
    meta.pad_tokens = packer.pad_tokens
    meta.context_tokens = int((mask == CONTEXT).sum())
    atomic_write_bytes(path, ids.astype(dtype).tobytes())
    atomic_write_bytes(mask_path, mask.tobytes())
    atomic_write_bytes(meta_path, json.dumps(asdict(meta), indent=1).encode())
    return meta


class InstructFile:
    """An instruct token file opened as memory maps; rows are read on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.meta = InstructFileMeta(**json.loads(self.path.with_suffix(".json").read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise DataError(f"{self.path.with_suffix('.json')}: not a readable instruct file description ({e})") \
                from None
        self.seq_len = self.meta.seq_len
        self.pad_id = self.meta.settings.get("pad_id")
        self.tokens = np.memmap(self.path, dtype=np.dtype(self.meta.dtype), mode="r")
        self.mask = np.memmap(self.path.with_suffix(".mask.bin"), dtype=np.uint8, mode="r")
        row = self.seq_len + 1
        if self.tokens.size != self.meta.n_sequences * row or self.mask.size != self.tokens.size:
            raise DataError(f"{self.path}: size does not match its description; delete it to rebuild")
        self.n_sequences = self.meta.n_sequences

    def __len__(self) -> int:
        return self.n_sequences

    def sequence(self, k: int) -> np.ndarray:
        if not 0 <= k < self.n_sequences:
            raise IndexError(f"sequence {k} of {self.n_sequences}")
        row = self.seq_len + 1
        return np.asarray(self.tokens[k * row:(k + 1) * row], dtype=np.int64)

    def kinds(self, k: int) -> np.ndarray:
        """The kinds (ANSWER, CONTEXT, or 0: no loss) of row k's L targets."""
        row = self.seq_len + 1
        return np.asarray(self.mask[k * row + 1:(k + 1) * row], dtype=np.uint8)

    def targets(self, k: int, context: bool = False) -> np.ndarray:
        """The L targets of row k, IGNORE_INDEX where no loss is taken: answers only, or (context) every
        token of the examples."""
        kinds = self.kinds(k)
        keep = kinds != 0 if context else kinds == ANSWER
        return np.where(keep, self.sequence(k)[1:], IGNORE_INDEX)


def batch_of(f, indices: list[int]):
    """(inputs, targets) for rows of a token file or an instruct file (assistant-only targets there)."""
    x, y = make_batch([f.sequence(k) for k in indices], f.pad_id)
    if isinstance(f, InstructFile):
        # Targets come from the mask alone: an EOS ending an answer is trained even when pad == EOS.
        y = torch.from_numpy(np.stack([f.targets(k) for k in indices]))
    return x, y


class MaskedMixedStream(MixedStream):
    """MixedStream whose instruct sources give answer targets (and their context's, where the source
    has a prompt_loss_weight), and which weighs each target by its source's settings (recipe
    `loss_weight`: a small source whose few targets matter, such as the answers of retrieval drills,
    would otherwise vanish in a token-averaged loss)."""

    def __init__(self, files, weights, seed: int, loss_weights: list[float] | None = None,
                 prompt_loss_weights: list[float] | None = None):
        super().__init__(files, weights, seed)
        self.loss_weights = list(loss_weights) if loss_weights is not None else [1.0] * len(files)
        self.prompt_loss_weights = (list(prompt_loss_weights) if prompt_loss_weights is not None
                                    else [0.0] * len(files))
        if len(self.loss_weights) != len(files) or not all(w > 0 for w in self.loss_weights):
            raise ConfigError(f"data: loss weights must be positive, one per source, got {loss_weights}")
        if len(self.prompt_loss_weights) != len(files) or not all(w >= 0 for w in self.prompt_loss_weights):
            raise ConfigError(f"data: prompt loss weights must be 0 or more, one per source, got {prompt_loss_weights}")
        # Every target counts once: the plain token mean, no weights needed.
        self._uniform = all(w == 1.0 for w in self.loss_weights) and all(
            pw in (0.0, 1.0) for f, pw in zip(files, self.prompt_loss_weights) if isinstance(f, InstructFile))

    def target_weights(self, picks, y):
        """[B, T] loss weights of the targets y of the picked rows, or None when each target counts once."""
        if self._uniform:
            return None
        w = torch.zeros(y.shape, dtype=torch.float32)
        for r, (s, k) in enumerate(picks):
            f = self.files[s]
            if isinstance(f, InstructFile):
                kinds = torch.from_numpy(f.kinds(k).astype(np.int64))
                w[r] = torch.where(kinds == ANSWER, self.loss_weights[s],
                                   torch.where(kinds == CONTEXT, self.prompt_loss_weights[s], 0.0))
            else:
                w[r] = self.loss_weights[s]
        return w * (y != IGNORE_INDEX)

    def fetch(self, picks):
        x, y = super().fetch(picks)
        for r, (s, k) in enumerate(picks):
            if isinstance(self.files[s], InstructFile):
                y[r] = torch.from_numpy(self.files[s].targets(k, context=self.prompt_loss_weights[s] > 0))
        return x, y

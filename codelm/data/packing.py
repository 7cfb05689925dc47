"""Tokenize once into a memory-mapped token file, read it back as fixed-length sequences.

A token file `NAME.bin` is a flat array of token ids (uint16 when the vocabulary
fits, else uint32) with a sidecar `NAME.json` (settings, counts). Sequence k of
length L is tokens[k*L : k*L + L + 1]: L inputs and, shifted by one, L targets.

Packing concatenates documents, with one rule from the paper: a FIM-transformed
document is never cut across two sequences. When one does not fit in what is
left of the current sequence it waits, and plain text (which may be cut
anywhere, as in any concatenating packer) fills the gap; at the next sequence
start the waiting documents are placed first. Only when no plain text comes for
a while (or at the very end) is a gap padded with <pad>, which the loss skips.

Building is resumable: progress (documents done, tokens written, the packer's
waiting documents) is saved every few thousand documents, and a restarted build
truncates the partial file to the last save and continues from there.

`MixedStream` draws sequences from several token files with mixing weights, in
an order fixed by a seed: each source is visited in a fresh random permutation
per epoch, and which source the i-th draw comes from is a function of (seed, i).
Its position (draws made, draws per source) is what a checkpoint records.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

from codelm.data.fim import FimSettings, encode_document, require_fim_tokens
from codelm.errors import ConfigError, DataError
from codelm.files import write_json

IGNORE_INDEX = -100
FORMAT = 1


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


# ------------------------------------------------------------ documents
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")


def split_document(text: str, max_chars: int | None) -> list[str]:
    """Cut a long document at blank lines into pieces of at most max_chars where possible.

    For miniature runs whose context (a few hundred tokens) is far shorter than a
    source file: the pieces (functions, classes, paragraphs) then fit one context
    and can take part in FIM. The pieces concatenate back to the document; a
    single paragraph longer than max_chars stays one (long) piece.
    """
    if not max_chars or len(text) <= max_chars:
        return [text]
    bounds = [0] + [m.end() for m in _BLANK_LINES.finditer(text)] + [len(text)]
    pieces: list[str] = []
    current = ""
    for a, b in zip(bounds, bounds[1:]):
        paragraph = text[a:b]
        if current and len(current) + len(paragraph) > max_chars:
            pieces.append(current)
            current = paragraph
        else:
            current += paragraph
    if current:
        pieces.append(current)
    return pieces


# --------------------------------------------------------------- packer
class Packer:
    """Concatenates examples into a stream of length-L windows; FIM examples never straddle two."""

    def __init__(self, seq_len: int, pad_id: int, max_waiting: int = 64):
        self.seq_len = seq_len
        self.pad_id = pad_id
        self.max_waiting = max_waiting
        self.fill = 0                      # tokens already in the current window
        self.waiting: list[list[int]] = []
        self.pad_tokens = 0

    def state(self) -> dict:
        return {"fill": self.fill, "waiting": self.waiting, "pad_tokens": self.pad_tokens}

    def load_state(self, s: dict) -> None:
        self.fill, self.waiting, self.pad_tokens = s["fill"], [list(w) for w in s["waiting"]], s["pad_tokens"]

    def _emit(self, out: list[int], ids: list[int]) -> None:
        out.extend(ids)
        self.fill = (self.fill + len(ids)) % self.seq_len

    def _pad_window(self, out: list[int]) -> None:
        if self.fill:
            n = self.seq_len - self.fill
            self.pad_tokens += n
            self._emit(out, [self.pad_id] * n)

    def _place_waiting(self, out: list[int]) -> None:
        """At a window start: place waiting examples, first fit, in order."""
        keep = []
        for ids in self.waiting:
            if len(ids) <= self.seq_len - self.fill:
                self._emit(out, ids)
            else:
                keep.append(ids)
        self.waiting = keep

    def add(self, ids: list[int], whole: bool) -> list[int]:
        """Tokens to append to the stream after this example (maybe none, maybe earlier ones)."""
        out: list[int] = []
        if whole:
            if len(ids) > self.seq_len:
                raise ValueError(f"an example that must stay whole has {len(ids)} > {self.seq_len} tokens")
            if len(ids) <= self.seq_len - self.fill:
                self._emit(out, ids)
            else:
                self.waiting.append(ids)
                if len(self.waiting) > self.max_waiting:     # no plain text to fill the gap: pad it
                    self._pad_window(out)
                    self._place_waiting(out)
            return out
        pos = 0
        while pos < len(ids):
            take = ids[pos:pos + self.seq_len - self.fill]
            self._emit(out, take)
            pos += len(take)
            if self.fill == 0 and self.waiting:
                self._place_waiting(out)
        return out

    def finish(self) -> list[int]:
        """Flush everything waiting, pad the last window, and add the last window's final target."""
        out: list[int] = []
        while self.waiting:
            self._pad_window(out)
            self._place_waiting(out)
        self._pad_window(out)
        self.pad_tokens += 1
        out.append(self.pad_id)
        return out


# ------------------------------------------------------------- building
@dataclass
class TokenFileMeta:
    format: int
    seq_len: int
    dtype: str
    vocab_size: int
    tokenizer: str            # fingerprint of the tokenizer the ids come from
    settings: dict            # what else the content depends on (FIM, document split, source)
    n_tokens: int = 0
    n_sequences: int = 0
    documents: int = 0        # after splitting long documents into pieces
    kinds: dict = field(default_factory=dict)   # plain / psm / spm / long -> count
    fim_overflow: int = 0
    pad_tokens: int = 0
    complete: bool = False


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable id for the tokenizer's vocabulary and specials (so stale token files are rebuilt)."""
    h = hashlib.sha256()
    for name in ("kind", "vocab_size", "bos_id", "eos_id", "pad_id", "prefix_id", "suffix_id",
                 "middle_id", "eot_id"):
        h.update(f"{name}={getattr(tokenizer, name, None)};".encode())
    probe = "def f(x):\n    return x + 1  # ünïcode ✓\n\tpass"
    h.update(repr(tokenizer.encode(probe)).encode())
    return h.hexdigest()[:16]


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def build_token_file(texts: Iterable[str], tokenizer, path: str | Path, seq_len: int,
                     fim: FimSettings | None = None, max_document_chars: int | None = None,
                     settings: dict | None = None, show_progress: bool = True,
                     desc: str = "tokenize", save_every: int = 2000) -> TokenFileMeta:
    """Tokenize, FIM-transform and pack `texts` into `path` (NAME.bin + NAME.json), resumably.

    An existing complete file built with the same tokenizer and settings is reused as it is.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if seq_len < 16:
        raise ConfigError(f"seq_len must be at least 16, got {seq_len}")
    if fim is not None and fim.rate > 0:
        fim.check()
        require_fim_tokens(tokenizer)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    dtype = token_dtype(tokenizer.vocab_size)
    want = TokenFileMeta(FORMAT, seq_len, np.dtype(dtype).name, tokenizer.vocab_size,
                         tokenizer_fingerprint(tokenizer),
                         {"fim": asdict(fim) if fim else None, "max_document_chars": max_document_chars,
                          "pad_id": pad_id, "pad_is_eos": tokenizer.pad_id is None, **(settings or {})})
    meta_path = _meta_path(path)
    if meta_path.exists() and path.exists():
        have = read_meta(path)
        if have.complete and _same_build(have, want):
            return have

    partial = path.with_name(path.name + ".partial")
    progress_path = path.with_name(path.name + ".progress.json")
    packer = Packer(seq_len, pad_id)
    meta = want
    docs_done = 0
    if partial.exists() and progress_path.exists():
        prog = json.loads(progress_path.read_text())
        saved = TokenFileMeta(**prog["meta"])
        if _same_build(saved, want):
            meta, docs_done = saved, prog["docs_done"]
            packer.load_state(prog["packer"])
            with open(partial, "r+b") as f:       # drop tokens written after the last save
                f.truncate(meta.n_tokens * np.dtype(dtype).itemsize)
    if docs_done == 0:
        meta = want
        partial.unlink(missing_ok=True)

    def save_progress():
        meta.pad_tokens = packer.pad_tokens
        write_json(progress_path, {"meta": asdict(meta), "docs_done": docs_done,
                                           "packer": packer.state()})

    bar = tqdm(desc=desc, unit="doc", disable=not show_progress, initial=docs_done)
    buf: list[int] = []
    with open(partial, "ab") as f:
        def flush():
            if buf:
                np.asarray(buf, dtype=dtype).tofile(f)
                meta.n_tokens += len(buf)
                buf.clear()

        for doc_no, text in enumerate(texts):
            if doc_no < docs_done:
                continue
            for piece in split_document(text, max_document_chars):
                enc = encode_document(piece, tokenizer, meta.documents, seq_len, fim)
                meta.documents += 1
                meta.kinds[enc.kind] = meta.kinds.get(enc.kind, 0) + 1
                meta.fim_overflow += enc.overflow
                buf.extend(packer.add(enc.ids, enc.whole))
            docs_done = doc_no + 1
            bar.update(1)
            if docs_done % save_every == 0:
                flush()
                f.flush()
                os.fsync(f.fileno())
                save_progress()
        buf.extend(packer.finish())
        flush()
    bar.close()
    if meta.documents == 0:
        partial.unlink(missing_ok=True)
        progress_path.unlink(missing_ok=True)
        raise DataError(f"{desc}: no documents to tokenize (is the corpus empty?)")
    meta.pad_tokens = packer.pad_tokens
    meta.n_sequences = (meta.n_tokens - 1) // seq_len
    meta.complete = True
    # A streamed writer: the token file grows over a long, resumable run (appended, fsynced at each
    # checkpoint of progress), so it is renamed into place here rather than written by files.py.
    os.replace(partial, path)
    write_json(meta_path, asdict(meta))
    progress_path.unlink(missing_ok=True)
    return meta


def _same_build(a: TokenFileMeta, b: TokenFileMeta) -> bool:
    return (a.format, a.seq_len, a.dtype, a.vocab_size, a.tokenizer, a.settings) == \
           (b.format, b.seq_len, b.dtype, b.vocab_size, b.tokenizer, b.settings)


def read_meta(path: str | Path) -> TokenFileMeta:
    mp = _meta_path(Path(path))
    try:
        return TokenFileMeta(**json.loads(mp.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise DataError(f"{mp}: not a readable token-file description ({e})") from None


# -------------------------------------------------------------- reading
class TokenFile:
    """A token file opened as a memory map: sequences are read on demand, never all at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = read_meta(self.path)
        if not self.meta.complete:
            raise DataError(f"{self.path}: token file is incomplete (its build was interrupted)")
        self.seq_len = self.meta.seq_len
        self.pad_id = self.meta.settings.get("pad_id")
        self.pad_is_eos = bool(self.meta.settings.get("pad_is_eos", False))
        self.tokens = np.memmap(self.path, dtype=np.dtype(self.meta.dtype), mode="r")
        if self.tokens.size != self.meta.n_tokens:
            raise DataError(f"{self.path}: holds {self.tokens.size} tokens, its description says "
                            f"{self.meta.n_tokens}; rebuild it")
        self.n_sequences = self.meta.n_sequences

    def __len__(self) -> int:
        return self.n_sequences

    def sequence(self, k: int) -> np.ndarray:
        """L + 1 tokens: inputs are [:-1], targets [1:]."""
        if not 0 <= k < self.n_sequences:
            raise IndexError(f"sequence {k} of {self.n_sequences}")
        L = self.seq_len
        return np.asarray(self.tokens[k * L: k * L + L + 1], dtype=np.int64)


def make_batch(rows: list[np.ndarray], pad_id: int | None, pad_is_eos: bool = False):
    """(inputs, targets) int64 tensors [B, L]; padding targets are IGNORE_INDEX.

    A tokenizer without a pad token (Llama's SentencePiece) pads with EOS; then only an EOS that
    follows an EOS is padding, so every document's own EOS is still a target."""
    arr = np.stack(rows)
    x = torch.from_numpy(arr[:, :-1].copy())
    y = torch.from_numpy(arr[:, 1:].copy())
    if pad_id is not None:
        padding = (y == pad_id) & (x == pad_id) if pad_is_eos else (y == pad_id)
        y[padding] = IGNORE_INDEX
    return x, y


@dataclass
class StreamPosition:
    draws: int = 0                              # sequences drawn so far, all sources
    per_source: list[int] = field(default_factory=list)


class MixedStream:
    """Sequences from several token files with mixing weights, in a seeded order that can be resumed."""

    def __init__(self, files: list[TokenFile], weights: list[float], seed: int):
        if not files:
            raise ConfigError("data: no sources")
        if len(weights) != len(files) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"data: weights must be non-negative with a positive sum, got {weights}")
        for f in files:
            if f.n_sequences == 0:
                raise DataError(f"{f.path}: holds no complete sequence of {f.seq_len} tokens; "
                                "the corpus is too small for this sequence length")
        self.files = files
        self.probs = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self.cum = np.cumsum(self.probs)
        self.seed = seed
        self.position = StreamPosition(0, [0] * len(files))
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _source_of(self, draw: int) -> int:
        if len(self.files) == 1:
            return 0
        u = np.random.default_rng([self.seed, 1, draw]).random()
        return int(min(np.searchsorted(self.cum, u, side="right"), len(self.files) - 1))

    def _index_in(self, source: int, k: int) -> int:
        n = self.files[source].n_sequences
        epoch = k // n
        key = (source, epoch)
        if key not in self._perms:
            if len(self._perms) > 8:
                self._perms.clear()
            self._perms[key] = np.random.default_rng([self.seed, 2, source, epoch]).permutation(n)
        return int(self._perms[key][k % n])

    def draw(self, n: int) -> list[tuple[int, int]]:
        """The next n (source, sequence index) pairs; advances the position."""
        out = []
        for _ in range(n):
            s = self._source_of(self.position.draws)
            out.append((s, self._index_in(s, self.position.per_source[s])))
            self.position.per_source[s] += 1
            self.position.draws += 1
        return out

    def fetch(self, picks: list[tuple[int, int]]):
        rows = [self.files[s].sequence(k) for s, k in picks]
        return make_batch(rows, self.files[0].pad_id, getattr(self.files[0], "pad_is_eos", False))

    def epochs(self) -> list[float]:
        return [c / f.n_sequences for c, f in zip(self.position.per_source, self.files)]

    def state_dict(self) -> dict:
        return asdict(self.position)

    def load_state_dict(self, s: dict) -> None:
        if len(s["per_source"]) != len(self.files):
            raise ConfigError(f"data: the checkpoint's stream has {len(s['per_source'])} sources, "
                              f"the recipe {len(self.files)}")
        self.position = StreamPosition(int(s["draws"]), [int(x) for x in s["per_source"]])

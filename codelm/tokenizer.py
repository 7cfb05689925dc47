"""Tokenizers: our byte-level BPE for code, and Code Llama's own SentencePiece tokenizer.

(Over 500 lines on purpose: one Tokenizer class over two backends, whose encode/decode/infilling
rules must be read side by side to stay token-exact with each other and with Meta's reference.)

One `Tokenizer` class wraps two backends:

* kind "sentencepiece": a `tokenizer.model` read by the sentencepiece library. This is the
  tokenizer Meta trained and shipped with every Code Llama checkpoint, so it is the ground truth.
* kind "bpe": any `tokenizer.json` of the Hugging Face `tokenizers` library. That covers our own
  byte-level BPE (`train_tokenizer`) and the converted Llama tokenizers of Hub checkpoints.

Code Llama's infilling rule (paper §2.3, reference section 2.1): SentencePiece adds an implicit
leading space (the "dummy prefix") to every encoded text; for the suffix and the middle of an
infilling example it is suppressed. `encode_infilling` encodes without the dummy prefix and
`decode_infilling` decodes without stripping it, so a generated middle that starts with a space
keeps it. We get there with a second pipeline that has the dummy prefix switched off (a second
SentencePiece processor, or a second `tokenizers` pipeline), which is exact: the reference's trick
of encoding a sentinel character in front and dropping two pieces gives the same ids but depends
on the sentinel being a single piece. Our byte-level BPE has no dummy prefix, so there the
infilling variants equal the ordinary ones.

When a directory holds both `tokenizer.model` and `tokenizer.json` we load `tokenizer.model`: it
is what the reference implementation and the training used, while `tokenizer.json` is a
conversion, and not always a faithful one: the pipeline that transformers 5's LlamaTokenizer and
CodeLlamaTokenizer build drops a space at the start of texts that begin with one (its Metaspace
pre-tokenizer does not prepend "▁" when the text already starts with one). Llama-style
`tokenizer.json` files are therefore rebuilt on load into SentencePiece's exact form (normalizer
Replace(" ", "▁") + Prepend("▁"), no Metaspace), so both paths give the same ids.

Texts are always encoded as text: a literal "<s>" or "<PRE>" inside a source file becomes ordinary
tokens, never a control id (special ids are only ever placed by the caller, through `bos=`/`eos=`
or a prompt builder).
"""

from __future__ import annotations

import json
import re
import sysconfig
import warnings
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE

from codelm.errors import ConfigError, DataError, TokenizerError
from codelm.files import atomic_write_bytes

# Our byte-level BPE reserves these, in this order, at ids 0..7.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<PRE>", "<SUF>", "<MID>", "<EOT>")
# Code Llama's infilling pieces (ids 32007..32010 in the 32,016 vocabulary); SentencePiece's
# word-boundary mark U+2581 is part of each piece.
CODE_LLAMA_FIM_PIECES = ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>")
STEP_PIECE = "<step>"  # 70B-Instruct turn separator

SP_SPACE = "▁"
# The Llama 2 / Code Llama - Instruct layout of codelm.data.dialogs, as the Jinja chat template that
# tokenizer_config.json carries, so vLLM's and transformers' chat routes lay a dialog out token for token
# as `codelm chat` does: "<s>[INST] {user} [/INST] {answer} </s>" per exchange, a leading system message
# folded into the first user turn as "<<SYS>>\n{system}\n<</SYS>>\n\n{user}", texts stripped.
LLAMA2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('roles must alternate user/assistant starting with user (system optional first)') }}"
    "{%- endif -%}"
    "{%- if m['role'] == 'user' -%}"
    "{{ bos_token + '[INST] ' + ((system if loop.first else '') + m['content']).strip() + ' [/INST]' }}"
    "{%- else -%}{{ ' ' + m['content'].strip() + ' ' + eos_token }}{%- endif -%}"
    "{%- endfor -%}"
)
_FIM_ROLES = ("prefix", "suffix", "middle", "eot")
_ROLES = ("bos", "eos", "pad", "unk", *_FIM_ROLES, "step")
# Piece names tried, in order, when a tokenizer.json comes without a tokenizer_config.json naming them.
_ROLE_CANDIDATES = {
    "bos": ("<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>"),
    "eos": ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"),
    "pad": ("<pad>",),
    "unk": ("<unk>",),
    "prefix": ("▁<PRE>", "<PRE>"),
    "suffix": ("▁<SUF>", "<SUF>"),
    "middle": ("▁<MID>", "<MID>"),
    "eot": ("▁<EOT>", "<EOT>"),
    "step": (STEP_PIECE,),
}
# tokenizer_config.json keys naming each role (CodeLlamaTokenizer writes prefix_token etc.).
_CONFIG_KEYS = {
    "bos": "bos_token", "eos": "eos_token", "pad": "pad_token", "unk": "unk_token",
    "prefix": "prefix_token", "suffix": "suffix_token", "middle": "middle_token", "eot": "eot_token",
}


class Tokenizer:
    """Encode and decode text; knows the special ids completion and infilling need.

    Build one with `Tokenizer.load(path)` or `train_tokenizer(...)`. Attributes: `kind`
    ("bpe" or "sentencepiece"), `vocab_size`, `bos_id`, `eos_id`, `pad_id`, `unk_id`,
    `prefix_id`, `suffix_id`, `middle_id`, `eot_id`, `step_id` (None when the tokenizer lacks
    that token) and `source` (where it came from, for error messages).
    """

    kind: str  # "bpe" (a tokenizer.json) or "sentencepiece" (a tokenizer.model)
    source: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int | None
    unk_id: int | None
    prefix_id: int | None
    suffix_id: int | None
    middle_id: int | None
    eot_id: int | None
    step_id: int | None

    def __init__(self, kind: str, payload: bytes | str, source: str, names: dict | None = None):
        """Internal: `payload` is the tokenizer.model bytes or the tokenizer.json text;
        `names` maps roles (bos, eos, prefix, ...) to piece strings read from tokenizer_config.json."""
        self.kind = kind
        self.source = source
        self._payload = payload
        self._names = dict(names or {})
        if kind == "sentencepiece":
            self._init_sentencepiece(payload)
        elif kind == "bpe":
            self._init_bpe(payload)
        else:
            raise ValueError(f"unknown tokenizer kind {kind!r}")
        self._special_ids = frozenset(
            getattr(self, f"{role}_id") for role in _ROLES if getattr(self, f"{role}_id") is not None
        )

    def __reduce__(self):  # picklable for data-loader workers
        return (Tokenizer, (self.kind, self._payload, self.source, self._names))

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, source={self.source!r})"

    # ---- construction -------------------------------------------------------------------------

    def _init_sentencepiece(self, model_bytes: bytes) -> None:
        try:
            if not model_bytes:
                raise ValueError("empty file")
            self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
            proto = sentencepiece_model_pb2.ModelProto()
            proto.ParseFromString(model_bytes)
            if proto.normalizer_spec.add_dummy_prefix:
                proto_infill = sentencepiece_model_pb2.ModelProto()
                proto_infill.CopyFrom(proto)
                proto_infill.normalizer_spec.add_dummy_prefix = False
                self._sp_infill = spm.SentencePieceProcessor(model_proto=proto_infill.SerializeToString())
            else:
                self._sp_infill = self._sp
        except Exception as e:
            raise TokenizerError(f"{self.source}: not a readable SentencePiece model ({_first_line(e)})") from None
        self._sp_proto = proto
        sp = self._sp
        self.vocab_size = sp.get_piece_size()
        if sp.bos_id() < 0 or sp.eos_id() < 0:
            raise TokenizerError(f"{self.source}: SentencePiece model defines no BOS or EOS piece")
        self.bos_id, self.eos_id = sp.bos_id(), sp.eos_id()
        self.unk_id = sp.unk_id() if sp.unk_id() >= 0 else None
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else None
        for role, piece in zip(_FIM_ROLES, CODE_LLAMA_FIM_PIECES):
            setattr(self, f"{role}_id", self._sp_piece_id(piece))
        self.step_id = self._sp_piece_id(STEP_PIECE)

    def _sp_piece_id(self, piece: str) -> int | None:
        # SentencePiece answers the unk id for an unknown piece (the reference's `... or None`).
        i = self._sp.piece_to_id(piece)
        return None if self._sp.is_unknown(i) else i

    def _init_bpe(self, json_text: str) -> None:
        try:
            spec = json.loads(json_text)
            if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
                raise ValueError("no 'model' section")
            ordinary, infill = _split_dummy_prefix(spec)
            self._hf = HFTokenizer.from_str(json.dumps(ordinary))
            self._hf_infill = HFTokenizer.from_str(json.dumps(infill)) if infill is not ordinary else self._hf
        except Exception as e:
            raise TokenizerError(f"{self.source}: not a readable tokenizer.json ({_first_line(e)})") from None
        for hf in (self._hf, self._hf_infill):  # possibly the same object twice: harmless
            hf.encode_special_tokens = True  # literal "<s>" in a text stays text
            hf.no_padding()
            hf.no_truncation()
        self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
        unk_in_model = spec["model"].get("unk_token")
        for role in _ROLES:
            named = self._names.get(role)
            candidates = (named,) if named else _ROLE_CANDIDATES[role]
            if role == "unk" and not named and unk_in_model:
                candidates = (unk_in_model,)
            found = None
            for piece in candidates:
                i = self._hf.token_to_id(piece)
                if i is not None:
                    found = i
                    break
            if named and found is None:
                raise TokenizerError(f"{self.source}: tokenizer_config names {role} token {named!r}, "
                                     "which is not in the vocabulary")
            setattr(self, f"{role}_id", found)
        if self.bos_id is None or self.eos_id is None:
            raise TokenizerError(f"{self.source}: no BOS or EOS token found (looked for <s> and </s>; "
                                 "a tokenizer_config.json beside it can name them as bos_token/eos_token)")

    # ---- encoding -----------------------------------------------------------------------------

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Ordinary encoding. A SentencePiece (Llama) tokenizer adds its implicit leading space."""
        if self.kind == "sentencepiece":
            ids = self._sp.encode(text)
        else:
            ids = self._hf.encode(text, add_special_tokens=False).ids
        return self._wrap(ids, bos, eos)

    def encode_batch(self, texts: list[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        """`encode` for many texts at once (the backends spread the work over threads)."""
        texts = list(texts)
        if self.kind == "sentencepiece":
            batch = self._sp.encode(texts)
        else:
            batch = [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]
        return [self._wrap(ids, bos, eos) for ids in batch]

    def encode_infilling(self, text: str) -> list[int]:
        """Encoding without the implicit leading space: Code Llama's rule for the suffix and middle.
        Equals `encode` for tokenizers without a dummy prefix (our byte-level BPE)."""
        if self.kind == "sentencepiece":
            return self._sp_infill.encode(text)
        return self._hf_infill.encode(text, add_special_tokens=False).ids

    def _wrap(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        return ([self.bos_id] if bos else []) + list(ids) + ([self.eos_id] if eos else [])

    # ---- decoding -----------------------------------------------------------------------------

    def decode(self, ids) -> str:
        """Text of `ids` without special tokens; strips the dummy-prefix space like SentencePiece."""
        return self._decode(ids, infilling=False)

    def decode_infilling(self, ids) -> str:
        """Like `decode`, but a leading space of the first token is kept: for generated middles and
        completion continuations, which follow text that is already there."""
        return self._decode(ids, infilling=True)

    def _decode(self, ids, infilling: bool) -> str:
        ids = self._checked_ids(ids)
        ids = [i for i in ids if i not in self._special_ids]
        if self.kind == "sentencepiece":
            return (self._sp_infill if infilling else self._sp).decode(ids)
        hf = self._hf_infill if infilling else self._hf
        return hf.decode(ids, skip_special_tokens=True)

    def _checked_ids(self, ids) -> list[int]:
        if hasattr(ids, "tolist"):  # torch tensor, numpy array
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise TokenizerError(f"{self.source}: token id {i} is outside the vocabulary "
                                     f"(size {self.vocab_size})")
        return ids

    def id_to_piece(self, i: int) -> str:
        (i,) = self._checked_ids([i])
        return self._sp.id_to_piece(i) if self.kind == "sentencepiece" else self._hf.id_to_token(i)

    def piece_to_id(self, piece: str) -> int | None:
        """Id of a vocabulary piece, or None when the vocabulary lacks it."""
        if self.kind == "sentencepiece":
            i = self._sp.piece_to_id(piece)
            return None if self._sp.is_unknown(i) and piece != self._sp.id_to_piece(i) else i
        return self._hf.token_to_id(piece)

    # ---- checks -------------------------------------------------------------------------------

    @property
    def has_infilling(self) -> bool:
        return None not in (self.prefix_id, self.suffix_id, self.middle_id, self.eot_id)

    def require_infilling(self) -> None:
        """Raise TokenizerError unless all four infilling tokens exist."""
        if self.has_infilling:
            return
        missing = [role for role in _FIM_ROLES if getattr(self, f"{role}_id") is None]
        pieces = CODE_LLAMA_FIM_PIECES if self.kind == "sentencepiece" else ("<PRE>/▁<PRE>", "<SUF>/▁<SUF>",
                                                                           "<MID>/▁<MID>", "<EOT>/▁<EOT>")
        wanted = ", ".join(p for role, p in zip(_FIM_ROLES, pieces) if role in missing)
        raise TokenizerError(f"{self.source}: this tokenizer has no infilling tokens (missing {wanted}); "
                             "the model cannot infill (Code Llama 34B and the Python models were not "
                             "trained for it)")

    # ---- saving -------------------------------------------------------------------------------

    def save(self, directory) -> None:
        """Write tokenizer.json (and tokenizer.model for SentencePiece), tokenizer_config.json and
        special_tokens_map.json; `transformers.AutoTokenizer.from_pretrained(directory)` then encodes
        like this tokenizer (with BOS added, as Llama tokenizers do). A stale tokenizer.model in the
        directory is removed when saving a "bpe" tokenizer, since `load` would prefer it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.kind == "sentencepiece":
            atomic_write_bytes(directory / "tokenizer.model", self._payload)
            json_text = _sentencepiece_to_tokenizer_json(self._sp_proto, self.bos_id)
            if json_text is not None:
                atomic_write_bytes(directory / "tokenizer.json", json_text.encode("utf-8"))
        else:
            atomic_write_bytes(directory / "tokenizer.json", self._hf.to_str(pretty=True).encode("utf-8"))
            stale = directory / "tokenizer.model"
            if stale.exists():
                stale.unlink()
        special = self._special_token_strings()
        extra = [special[r] for r in (*_FIM_ROLES, "step") if r in special]
        special_map = {f"{r}_token": special[r] for r in ("bos", "eos", "unk", "pad") if r in special}
        special_map["additional_special_tokens"] = extra
        config = {
            # The generic fast class loads tokenizer.json as written. transformers 5's LlamaTokenizer and
            # CodeLlamaTokenizer rebuild the pipeline and then mis-encode texts that start with a space.
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special_map,
            "add_bos_token": True,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "padding_side": "left",
        }
        for role in _FIM_ROLES:  # the names CodeLlamaTokenizer uses; our loader reads them back
            if role in special:
                config[_CONFIG_KEYS[role]] = special[role]
        if self.step_id is None:  # the [INST] layout `codelm chat` uses (the 70B <step> layout has no template)
            config["chat_template"] = LLAMA2_CHAT_TEMPLATE
        atomic_write_bytes(directory / "tokenizer_config.json", _json_bytes(config))
        atomic_write_bytes(directory / "special_tokens_map.json", _json_bytes(special_map))

    def _special_token_strings(self) -> dict[str, str]:
        return {role: self.id_to_piece(getattr(self, f"{role}_id"))
                for role in _ROLES if getattr(self, f"{role}_id") is not None}

    # ---- loading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path) -> "Tokenizer":
        """Load from a directory holding tokenizer.model and/or tokenizer.json, or from either file.
        tokenizer.model wins when both exist (see the module docstring)."""
        path = Path(path)
        if path.is_dir():
            model, tok_json = path / "tokenizer.model", path / "tokenizer.json"
            if model.is_file():
                try:
                    return cls._load_sentencepiece(model)
                except TokenizerError as e:
                    if not tok_json.is_file():
                        raise
                    # e.g. a Llama-3 style tiktoken file: tokenizer.json is the real tokenizer then
                    warnings.warn(f"{e}; using {tok_json} instead", stacklevel=2)
            if tok_json.is_file():
                return cls._load_json(tok_json)
            raise TokenizerError(f"{path}: no tokenizer.model or tokenizer.json in this directory")
        if not path.exists():
            raise TokenizerError(f"{path}: tokenizer not found (give a directory holding tokenizer.json "
                                 "or tokenizer.model, or one of those files)")
        if path.suffix == ".json":
            return cls._load_json(path)
        return cls._load_sentencepiece(path)

    @classmethod
    def _load_sentencepiece(cls, path: Path) -> "Tokenizer":
        return cls("sentencepiece", _read_bytes(path), str(path))

    @classmethod
    def _load_json(cls, path: Path) -> "Tokenizer":
        raw = _read_bytes(path)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TokenizerError(f"{path}: not a readable tokenizer.json (not UTF-8 text)") from None
        return cls("bpe", text, str(path), _names_from_config(path.parent / "tokenizer_config.json"))


# ---- training -------------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
                    show_progress: bool = True) -> Tokenizer:
    """Train a byte-level BPE on code.

    Special tokens sit at fixed ids: <unk>=0, <s>=1, </s>=2, <pad>=3, <PRE>=4, <SUF>=5, <MID>=6,
    <EOT>=7. Bytes are the base alphabet, so nothing is ever unknown and decode(encode(x)) == x for
    every text (no normalizer touches whitespace or unicode). Digits are split one by one, so numbers
    tokenize consistently; runs of spaces and newline-plus-indentation become tokens of their own.
    """
    smallest = len(SPECIAL_TOKENS) + 256
    if vocab_size < smallest:
        raise ConfigError(f"vocab_size {vocab_size} is too small: a byte-level BPE needs at least {smallest} "
                          f"({len(SPECIAL_TOKENS)} special tokens + 256 bytes)")
    hf = HFTokenizer(BPE(unk_token=None))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=show_progress,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    length = len(texts) if hasattr(texts, "__len__") else None
    hf.train_from_iterator(iter(texts), trainer=trainer, length=length)
    for i, token in enumerate(SPECIAL_TOKENS):
        if hf.token_to_id(token) != i:  # the trainer assigns special tokens first, in order
            raise RuntimeError(f"special token {token} got id {hf.token_to_id(token)}, expected {i}")
    # For transformers users: tokenizer("...") then starts with BOS, as with Llama.
    hf.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)])
    return Tokenizer("bpe", hf.to_str(), "<trained in memory>")


def stdlib_sample_texts(max_chars: int, min_file_chars: int = 2_000) -> list[str]:
    """Python source files of the running interpreter's standard library, in sorted order, until
    `max_chars` characters are gathered (the last file cut): real code that every machine has."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, total = [], 0
    for f in sorted(root.glob("*.py")):
        if total >= max_chars:
            break
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if len(text) >= min_file_chars:
            texts.append(text[: max_chars - total])
            total += len(texts[-1])
    if not texts and max_chars > 0:
        raise DataError(f"{root}: no Python standard-library sources found")
    return texts


# ---- tokenizer.json pipelines -----------------------------------------------------------------------


def _as_list(component: dict | None, key: str) -> list[dict]:
    if component is None:
        return []
    if component.get("type") == "Sequence":
        return list(component[key])
    return [component]


def _sequence(items: list[dict], key: str) -> dict | None:
    if not items:
        return None
    return items[0] if len(items) == 1 else {"type": "Sequence", key: items}


def _is_prepend_space(n: dict) -> bool:
    return n.get("type") == "Prepend" and n.get("prepend") == SP_SPACE


def _is_start_space_doubling(n: dict) -> bool:
    # transformers 5 writes Replace(r"\A▁", "▁▁") so that Metaspace's prepend matches SentencePiece
    return n.get("type") == "Replace" and n.get("pattern", {}).get("Regex") == r"\A▁"


def _is_space_escape(n: dict) -> bool:
    return n.get("type") == "Replace" and n.get("pattern", {}).get("String") == " " and n.get("content") == SP_SPACE


def _metaspace_prepends(p: dict) -> bool:
    if p.get("type") != "Metaspace":
        return False
    scheme = p.get("prepend_scheme")
    return scheme in ("first", "always") if scheme is not None else bool(p.get("add_prefix_space", False))


def _split_dummy_prefix(spec: dict) -> tuple[dict, dict]:
    """Return (ordinary, infilling) tokenizer.json specs. For a tokenizer without a dummy prefix both
    are the same object. A Llama-style tokenizer (BPE with byte fallback, dummy prefix from a Prepend
    normalizer or a non-splitting Metaspace) is rebuilt in SentencePiece's exact form: normalizer
    [...others, Replace(" ", "▁"), Prepend("▁")], no Metaspace; the infilling variant drops the Prepend."""
    model = spec["model"]
    norms = _as_list(spec.get("normalizer"), "normalizers")
    pres = _as_list(spec.get("pre_tokenizer"), "pretokenizers")
    metaspaces = [p for p in pres if p.get("type") == "Metaspace"]
    prepends = any(_is_prepend_space(n) for n in norms) or any(_metaspace_prepends(p) for p in metaspaces)
    if not prepends:
        return spec, spec
    llama_style = (model.get("type") == "BPE" and model.get("byte_fallback")
                   and all(not p.get("split", True) for p in metaspaces))
    if llama_style:
        rest = [n for n in norms if not (_is_prepend_space(n) or _is_start_space_doubling(n) or _is_space_escape(n))]
        other_pres = [p for p in pres if p.get("type") != "Metaspace"]
        escape = {"type": "Replace", "pattern": {"String": " "}, "content": SP_SPACE}
        prepend = {"type": "Prepend", "prepend": SP_SPACE}
        dec_base = [{"type": "Replace", "pattern": {"String": SP_SPACE}, "content": " "},
                    {"type": "ByteFallback"}, {"type": "Fuse"}]
        strip = {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ordinary = {**spec, "normalizer": _sequence(rest + [escape, prepend], "normalizers"),
                    "pre_tokenizer": _sequence(other_pres, "pretokenizers"),
                    "decoder": _sequence(dec_base + [strip], "decoders")}
        infill = {**ordinary, "normalizer": _sequence(rest + [escape], "normalizers"),
                  "decoder": _sequence(dec_base, "decoders")}
        return ordinary, infill
    # Anything else (e.g. a splitting Metaspace): switch the prepend off for infilling, keep the rest.
    infill_norms = [n for n in norms if not (_is_prepend_space(n) or _is_start_space_doubling(n))]
    infill_pres = [{**p, "prepend_scheme": "never", "add_prefix_space": False} if p.get("type") == "Metaspace"
                   else p for p in pres]
    infill_decs = []
    for d in _as_list(spec.get("decoder"), "decoders"):
        if d.get("type") == "Strip":
            continue
        if d.get("type") == "Metaspace":
            d = {**d, "prepend_scheme": "never", "add_prefix_space": False}
        infill_decs.append(d)
    infill = {**spec, "normalizer": _sequence(infill_norms, "normalizers"),
              "pre_tokenizer": _sequence(infill_pres, "pretokenizers"),
              "decoder": _sequence(infill_decs, "decoders")}
    return spec, infill


def _sentencepiece_to_tokenizer_json(proto, bos_id: int) -> str | None:
    """A tokenizer.json that encodes like the SentencePiece BPE model `proto`, or None for
    non-BPE models (transformers converts those from tokenizer.model itself).

    SentencePiece's BPE repeatedly merges the adjacent pair whose concatenation is the
    highest-scoring normal piece. The equivalent ranked merge list holds every split of every normal
    piece into two normal pieces, ordered by the piece's score (ties by id). User-defined pieces are
    never merged but matched whole in the normalized text: a Split pre-tokenizer isolates them and
    `ignore_merges` lets BPE emit a whole-vocabulary word as is, as transformers' own converter does.
    """
    if proto.trainer_spec.model_type != 2:  # 2 = BPE in sentencepiece_model.proto
        return None
    normal, user_defined, control = 1, 4, (2, 3)  # piece types: 2 unknown, 3 control
    pieces = proto.pieces
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    normal_rank = {p.piece: (-p.score, i) for i, p in enumerate(pieces) if p.type == normal}
    ranked = []
    for piece, rank in normal_rank.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal_rank and right in normal_rank:
                ranked.append((rank, left, right))
    merges = [(left, right) for _, left, right in sorted(ranked)]
    user_pieces = [p.piece for p in pieces if p.type == user_defined]
    spec = proto.normalizer_spec
    hf = HFTokenizer(BPE(vocab=vocab, merges=merges, unk_token=proto.trainer_spec.unk_piece or "<unk>",
                         fuse_unk=True, byte_fallback=proto.trainer_spec.byte_fallback,
                         ignore_merges=bool(user_pieces)))
    norms = []
    if spec.precompiled_charsmap:
        norms.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:  # SentencePiece trims and collapses spaces only, not other whitespace
        norms += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.escape_whitespaces:
        norms.append(normalizers.Replace(" ", SP_SPACE))
    if spec.add_dummy_prefix:
        norms.append(normalizers.Prepend(SP_SPACE))
    hf.normalizer = normalizers.Sequence(norms)
    if user_pieces:
        pattern = "|".join(re.escape(p) for p in sorted(user_pieces, key=len, reverse=True))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    decs = [decoders.Replace(SP_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_dummy_prefix:
        decs.append(decoders.Strip(content=" ", left=1))
    hf.decoder = decoders.Sequence(decs)
    hf.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                           for p in pieces if p.type in control])
    bos = pieces[bos_id].piece
    hf.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
    return hf.to_str(pretty=True)


# ---- files ---------------------------------------------------------------------------------------


def _names_from_config(config_path: Path) -> dict[str, str]:
    """Role -> piece string from a Hugging Face tokenizer_config.json (missing file: {})."""
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{config_path}: not a readable tokenizer_config.json ({_first_line(e)})") from None
    if not isinstance(config, dict):
        raise TokenizerError(f"{config_path}: expected a JSON object")
    names = {}
    for role, key in _CONFIG_KEYS.items():
        value = config.get(key)
        if isinstance(value, dict):  # serialized AddedToken
            value = value.get("content")
        if isinstance(value, str) and value:
            names[role] = value
    return names


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TokenizerError(f"{path}: tokenizer file not found") from None
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read tokenizer file ({e.strerror})") from None


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]

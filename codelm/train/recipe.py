"""Training recipes: TOML files read into plain dataclasses, strictly.

Every key must be known and every value of the right type; the error names the
file and the dotted key (`recipes/x.toml: unknown key 'train.lr_max'`). Values
can be overridden from the command line as `section.key=value` (the value is
read as TOML, and as a plain string when it is not valid TOML).

Relative paths in a recipe are relative to the current directory.
See codelm/recipes/*.toml for annotated examples; they ship with the package and are found by name
(`codelm train demo`).
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from codelm.errors import ConfigError
from codelm.model.config import PRESETS, ModelConfig

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"  # shipped inside the package

try:
    import tomllib
except ImportError:  # Python 3.10
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None


@dataclass
class RunSection:
    name: str = "run"
    out_dir: str | None = None      # default: runs/<name>
    seed: int = 0


@dataclass
class ModelSection:
    preset: str | None = None       # a ModelConfig preset (tiny, small, codellama-7b, ...)
    init_from: str | None = None    # or a checkpoint (HF or Meta layout) to continue training from
    extend_vocab: bool = False      # grow the checkpoint's embeddings to the tokenizer (Llama 2 -> Code Llama)
    config: dict = field(default_factory=dict)  # ModelConfig fields to set (with init_from: rope only)


@dataclass
class TokenizerSection:
    path: str | None = None         # a tokenizer folder or file; default: init_from's tokenizer
    vocab_size: int | None = None   # or train a byte-level BPE of this size on the training data
    train_bytes: int = 50_000_000   # text to train it on, taken from the sources' training splits
    min_frequency: int = 2


@dataclass
class SourceSection:
    path: str                       # a corpus folder (train.jsonl, valid.jsonl) or a JSONL file with "text"
    weight: float = 1.0             # sampling weight in the mix
    name: str | None = None         # default: the folder's name
    kind: str = "text"              # text (documents, FIM) or instruct (dialogs or prompt/completion: loss on answers)
    loss_weight: float = 1.0        # each target token of this source counts this many times in the mean loss
    prompt_loss_weight: float = 0.0  # instruct: also train the prompts (user turns) at this weight; 0: answers only


@dataclass
class DataSection:
    sources: list[SourceSection] = field(default_factory=list)
    seq_len: int = 4096
    fim_rate: float = 0.9           # paper: 0.9 of the documents that fit one context
    fim_spm_rate: float = 0.5       # paper: half of them in SPM layout
    max_document_chars: int | None = None  # cut files at blank lines into pieces this long (miniature runs)


@dataclass
class TrainSection:
    max_steps: int = 1000
    batch_tokens: int = 4_194_304   # tokens per optimizer step, all processes together
    micro_batch_size: int = 1       # sequences per forward pass per process
    lr: float = 3e-4
    warmup_steps: int = 1000
    final_lr_ratio: float = 1 / 30  # cosine decays to lr * final_lr_ratio
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0          # max global gradient norm; 0 disables
    precision: str = "auto"         # auto (fp32 on CPU, bf16 autocast on GPU), fp32, bf16
    compile: bool = False           # torch.compile the model
    activation_checkpointing: bool = False
    device: str = "auto"            # auto, cpu, cuda
    threads: int | None = None      # CPU threads per process (default: cores / processes)
    eval_every: int = 500           # validation loss every N steps (and at the end); 0: only at the end
    eval_sequences: int = 64        # validation sequences per source
    checkpoint_every: int = 1000    # 0: only at the end
    keep_checkpoints: int = 2       # newest N step checkpoints kept (the final model is separate)
    log_every: int = 1
    stop_at_step: int | None = None # leave (with a checkpoint) after this step; the schedule still spans max_steps


@dataclass
class Recipe:
    path: str
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)

    @property
    def out_dir(self) -> Path:
        return Path(self.run.out_dir or f"runs/{self.run.name}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("path")
        return d


SECTIONS = {"run": RunSection, "model": ModelSection, "tokenizer": TokenizerSection,
            "data": DataSection, "train": TrainSection}


# ------------------------------------------------------------------ parsing
def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return "a list"
    if origin is dict or tp is dict:
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(value, tp, key: str, where: str):
    """Check `value` against annotation `tp`, converting tables to dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {key} must be {_type_name(tp)}, got {_show(value)}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list, got {_show(value)}")
        return [_convert(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a table, got {_show(value)}")
        return _build(tp, value, key, where)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a table, got {_show(value)}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key} must be a number, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string, got {_show(value)}")
        return value
    raise TypeError(f"unsupported recipe field type {tp}")


def _show(v) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "table"}.get(type(v), type(v).__name__)
    text = repr(v)
    return f"{kind} {text if len(text) < 60 else text[:57] + '...'}"


def _build(cls, table: dict, prefix: str, where: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        names = ", ".join(f"'{prefix}.{k}'" for k in unknown)
        raise ConfigError(f"{where}: unknown key {names} (known in [{prefix}]: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name in table:
            kwargs[name] = _convert(table[name], hints[name], f"{prefix}.{name}", where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key '{prefix}.{name}'")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], object]:
    """'train.max_steps=100' -> (['train', 'max_steps'], 100). Values are TOML, else plain strings."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.max_steps=100")
    key, raw = text.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override {text!r}: the key must be SECTION.NAME, e.g. train.max_steps")
    try:
        value = parse_toml(f"v = {raw.strip()}")["v"]
    except Exception:
        value = raw.strip()
    return parts, value


def parse_toml(text: str) -> dict:
    """TOML text as a table (tomllib; tomli on Python 3.10). Invalid TOML raises the library's error."""
    if tomllib is None:
        raise ConfigError("reading recipes needs Python 3.11+ or the 'tomli' package (pip install tomli)")
    return tomllib.loads(text)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides or []:
        parts, value = parse_override(text)
        node = raw
        for p in parts[:-1]:
            if not isinstance(node.setdefault(p, {}), dict):
                raise ConfigError(f"override {text!r}: '{p}' is not a table")
            node = node[p]
        node[parts[-1]] = value
    return raw


def recipe_from_dict(raw: dict, where: str = "recipe") -> Recipe:
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(repr(u) for u in unknown)} "
                          f"(known: {', '.join(SECTIONS)})")
    kwargs = {}
    for name, cls in SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: '{name}' must be a table ([{name}]), got {_show(table)}")
        kwargs[name] = _build(cls, table, name, where)
    recipe = Recipe(path=where, **kwargs)
    validate(recipe)
    return recipe


def shipped_recipes() -> list[str]:
    return sorted(p.name for p in RECIPES_DIR.glob("*.toml"))


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: the path itself when it exists, else a recipe shipped in the package by name
    (`demo`, `demo.toml`, `recipes/demo.toml`)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    name = p.name if p.suffix == ".toml" else p.name + ".toml"
    if (RECIPES_DIR / name).is_file():
        return RECIPES_DIR / name
    raise ConfigError(f"recipe {name_or_path} not found (not a file, nor a shipped recipe: "
                      f"{', '.join(shipped_recipes())})")


def read_raw_recipe(name_or_path: str | Path) -> tuple[dict, Path]:
    """The TOML table of a recipe (see find_recipe) before validation, and where it was found."""
    p = find_recipe(name_or_path)
    try:
        return parse_toml(p.read_text(encoding="utf-8")), p
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None
    except Exception as e:
        if tomllib is not None and isinstance(e, tomllib.TOMLDecodeError):
            raise ConfigError(f"{p}: not valid TOML ({e})") from None
        raise


def with_settings(raw: dict, settings: dict) -> dict:
    """A copy of a raw recipe with typed settings applied: {"train.max_steps": 30, "model.init_from": None}
    (None removes the key). For a program's own changes; a user's --set strings go through apply_overrides."""
    raw = copy.deepcopy(raw)
    for dotted, value in settings.items():
        node = raw
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return raw


def whole_sequences(raw: dict) -> dict:
    """Make a raw recipe's batch a whole number of sequences and its micro-batch a divisor of that, as the
    training loop requires, after a program changed the length (the lab's --seq-len and fine-tune factor)."""
    t, d = raw.setdefault("train", {}), raw.get("data", {})
    seq = d.get("seq_len", 4096)
    seqs = max(1, t.get("batch_tokens", seq) // seq)
    t["batch_tokens"] = seqs * seq
    micro = min(t.get("micro_batch_size", 1), seqs)
    while seqs % micro:
        micro -= 1
    t["micro_batch_size"] = micro
    return raw


def build_recipe(raw: dict, where: str, overrides: list[str] | None = None, settings: dict | None = None,
                 fit_batch: bool = False) -> Recipe:
    """A validated Recipe from a raw table: the user's --set `overrides` first, then a program's typed
    `settings` (see with_settings); `fit_batch` re-fits the batch to a length the program changed."""
    raw = with_settings(apply_overrides(copy.deepcopy(raw), overrides or []), settings or {})
    return recipe_from_dict(whole_sequences(raw) if fit_batch else raw, where)


def load_recipe(path: str | Path, overrides: list[str] | None = None, settings: dict | None = None) -> Recipe:
    """Read and validate a recipe (a path, or a shipped recipe's name); see build_recipe."""
    raw, p = read_raw_recipe(path)
    return build_recipe(raw, str(p) if not overrides else f"{p} (with --set {' '.join(overrides)})",
                        overrides, settings)


# --------------------------------------------------------------- validation
def validate(r: Recipe) -> None:
    w = r.path
    m, t, d, tr = r.model, r.tokenizer, r.data, r.train
    if (m.preset is None) == (m.init_from is None):
        raise ConfigError(f"{w}: set exactly one of model.preset and model.init_from")
    if m.preset is not None:
        if m.preset not in PRESETS:
            raise ConfigError(f"{w}: model.preset '{m.preset}' is unknown; choose one of {sorted(PRESETS)}")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(m.config) - known)
    if bad:
        raise ConfigError(f"{w}: unknown key(s) {', '.join(repr('model.config.' + b) for b in bad)} "
                          f"(ModelConfig fields: {', '.join(sorted(known))})")
    if m.init_from is not None:
        changeable = {"rope_theta", "rope_scaling", "max_seq_len", "norm_eps"}
        fixed = sorted(set(m.config) - changeable)
        if fixed:
            raise ConfigError(f"{w}: model.config.{fixed[0]} cannot be changed when continuing from a "
                              f"checkpoint (only {', '.join(sorted(changeable))} can)")
    if t.path is not None and t.vocab_size is not None:
        raise ConfigError(f"{w}: set tokenizer.path or tokenizer.vocab_size, not both")
    if t.path is None and t.vocab_size is None and m.init_from is None:
        raise ConfigError(f"{w}: no tokenizer: set tokenizer.path, or tokenizer.vocab_size to train one")
    if not d.sources:
        raise ConfigError(f"{w}: data.sources is empty: add at least one [[data.sources]] with a path")
    names = [s.name or Path(s.path).stem for s in d.sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"{w}: data.sources have the same name twice ({names}); give them distinct names")
    for i, s in enumerate(d.sources):
        if s.weight < 0:
            raise ConfigError(f"{w}: data.sources[{i}].weight must not be negative")
        if not s.loss_weight > 0:
            raise ConfigError(f"{w}: data.sources[{i}].loss_weight must be positive, got {s.loss_weight}")
        if s.kind not in ("text", "instruct"):
            raise ConfigError(f"{w}: data.sources[{i}].kind must be text or instruct, got {s.kind!r}")
        if s.prompt_loss_weight < 0 or (s.prompt_loss_weight > 0 and s.kind != "instruct"):
            raise ConfigError(f"{w}: data.sources[{i}].prompt_loss_weight must be 0 or more, and is for instruct "
                              f"sources only (got {s.prompt_loss_weight} on a {s.kind} source)")
        if s.kind == "instruct" and t.vocab_size is not None:
            raise ConfigError(f"{w}: data.sources[{i}] is instruct data: take the tokenizer of model.init_from "
                              "or tokenizer.path instead of training one (tokenizer.vocab_size)")
    if sum(s.weight for s in d.sources) <= 0:
        raise ConfigError(f"{w}: the data.sources weights sum to 0")
    _positive(w, "data.seq_len", d.seq_len, minimum=16)
    for name in ("fim_rate", "fim_spm_rate"):
        v = getattr(d, name)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{w}: data.{name} must be between 0 and 1, got {v}")
    for name in ("max_steps", "batch_tokens", "micro_batch_size", "log_every", "eval_sequences",
                 "keep_checkpoints"):
        _positive(w, f"train.{name}", getattr(tr, name))
    for name in ("warmup_steps", "eval_every", "checkpoint_every"):
        if getattr(tr, name) < 0:
            raise ConfigError(f"{w}: train.{name} must not be negative")
    if tr.batch_tokens % d.seq_len:
        raise ConfigError(f"{w}: train.batch_tokens ({tr.batch_tokens}) must be a multiple of data.seq_len "
                          f"({d.seq_len})")
    if tr.lr <= 0 or not 0 < tr.final_lr_ratio <= 1:
        raise ConfigError(f"{w}: train.lr must be > 0 and train.final_lr_ratio in (0, 1]")
    if not (0 <= tr.beta1 < 1 and 0 <= tr.beta2 < 1):
        raise ConfigError(f"{w}: train.beta1 and train.beta2 must be in [0, 1)")
    if tr.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"{w}: train.precision must be auto, fp32 or bf16, got {tr.precision!r}")
    if tr.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{w}: train.device must be auto, cpu or cuda, got {tr.device!r}")
    if tr.stop_at_step is not None and tr.stop_at_step <= 0:
        raise ConfigError(f"{w}: train.stop_at_step must be positive")
    if t.vocab_size is not None:
        _positive(w, "tokenizer.vocab_size", t.vocab_size)


def _positive(where: str, key: str, v: int, minimum: int = 1) -> None:
    if v < minimum:
        raise ConfigError(f"{where}: {key} must be at least {minimum}, got {v}")


def source_name(s: SourceSection) -> str:
    return s.name or Path(s.path).stem

"""`codelm complete` and `codelm infill`: load a checkpoint, stream the generation to the terminal."""
from __future__ import annotations

import sys
from pathlib import Path

from codelm.errors import CodelmError, warn
from codelm.generate import complete_batch, completion_tokens, infill_batch, infilling_tokens, split_fill
from codelm.generate.weights import EngineConfig, load_for_engine




def _read_arg(text: str) -> str:
    """@FILE: the file as is; otherwise the text (its escapes were read by the command line's parser)."""
    if text.startswith("@"):
        p = Path(text[1:])
        try:
            return p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise CodelmError(f"{p}: cannot read prompt file ({getattr(e, 'strerror', None) or e})") from None
    return text


def _kw(max_new_tokens: int, temperature: float, top_p: float, top_k: int, seed: int | None, stop) -> dict:
    return dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                top_k=top_k, seed=seed, stop=list(stop or []))


def fit_context(prompt_tokens: int, max_new_tokens: int, context: int, flag: str = "--max-new-tokens") -> int:
    """New tokens that fit the model's context after the prompt: `max_new_tokens`, or fewer with a warning
    (the same rule in every command that generates locally); a prompt that fills the context is an error."""
    room = context - prompt_tokens
    if room <= 0:
        raise CodelmError(f"the prompt has {prompt_tokens} tokens; this model's maximum context length is "
                          f"{context} tokens, so nothing can be generated")
    if max_new_tokens > room:
        warn(f"the prompt ({prompt_tokens} tokens) + {flag} {max_new_tokens} exceeds this model's maximum context "
             f"length of {context} tokens; generating at most {room} tokens")
        return room
    return max_new_tokens


def _stream(row, text):
    sys.stdout.write(text)
    sys.stdout.flush()


def complete_main(prompt: str, *, model: str, max_new_tokens: int = 128, temperature: float = 0.0,
                  top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop: list[str] | None = None,
                  stream: bool = True, engine: EngineConfig | None = None) -> int:
    """`codelm complete`: `prompt` is the text, or @FILE for a file's text as is; the generation streams to
    stdout (or is written at the end without `stream`)."""
    prompt = _read_arg(prompt)
    loaded = load_for_engine(model, engine or EngineConfig(max_batch=1))
    max_new = fit_context(len(completion_tokens(loaded.tokenizer, prompt)), max_new_tokens,
                          loaded.config.max_seq_len)
    on_text = _stream if stream else None
    if on_text:
        sys.stdout.write(prompt)
    g = complete_batch(loaded.model, loaded.tokenizer, [prompt], on_text=on_text, engine=engine,
                       **_kw(max_new, temperature, top_p, top_k, seed, stop))[0]
    if not stream:
        sys.stdout.write(prompt + g.text)
    sys.stdout.write("\n")
    print(f"[{len(g.tokens)} tokens, finish: {g.finish_reason}]", file=sys.stderr)
    return 0


def infill_main(*, model: str, prefix: str | None = None, suffix: str | None = None, file: str | None = None,
                spm: bool = False, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                top_k: int = 0, seed: int | None = None, stop: list[str] | None = None, stream: bool = True,
                engine: EngineConfig | None = None) -> int:
    """`codelm infill`: the middle between `prefix` and `suffix` (each text or @FILE), or around the <FILL>
    marker of `file`; streams to stdout (or writes at the end without `stream`)."""
    if file is not None:
        if prefix is not None or suffix is not None:
            raise CodelmError("give either --file or --prefix/--suffix, not both")
        try:
            text = Path(file).read_text()
        except OSError as e:
            raise CodelmError(f"{file}: cannot read ({e.strerror})") from None
        prefix, suffix = split_fill(text, source=file)
    else:
        if prefix is None and suffix is None:
            raise CodelmError("give --prefix and/or --suffix, or --file with a <FILL> marker")
        prefix, suffix = _read_arg(prefix or ""), _read_arg(suffix or "")
    loaded = load_for_engine(model, engine or EngineConfig(max_batch=1))
    max_new = fit_context(len(infilling_tokens(loaded.tokenizer, prefix, suffix, spm=spm)), max_new_tokens,
                          loaded.config.max_seq_len)
    on_text = _stream if stream else None
    if on_text:
        sys.stdout.write(prefix)
    g = infill_batch(loaded.model, loaded.tokenizer, [(prefix, suffix)], spm=spm, on_text=on_text, engine=engine,
                     **_kw(max_new, temperature, top_p, top_k, seed, stop))[0]
    if not stream:
        sys.stdout.write(prefix + g.text)
    sys.stdout.write(suffix if suffix.endswith("\n") else suffix + "\n")
    print(f"[middle: {len(g.tokens)} tokens, finish: {g.finish_reason}]", file=sys.stderr)
    return 0

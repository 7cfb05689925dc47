"""`codelm chat`: talk to an instruct model in the terminal, with history, a system prompt and streaming.

The model is a checkpoint run here (--model DIR) or any OpenAI-compatible server (--url, e.g.
`codelm serve`, vLLM, llama.cpp), which lays out the dialog itself. Locally the dialog is laid out
by `codelm.generate.prompts.chat_tokens` (the Llama 2 / Code Llama - Instruct layout).

Each line read is one user message (end a line with a backslash to continue it on the next).
Commands: /system TEXT sets the system prompt (and starts over), /reset forgets the history,
/history prints it, /exit or end of input quits. When the dialog no longer fits the model's
context, the oldest exchanges are dropped (the system prompt is kept) and a note says so.
Reading standard input that is not a terminal, it prints no prompt marks, so
`printf 'hi\\n' | codelm chat --model DIR` works in scripts.
"""
from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from typing import Callable, TextIO

from codelm.errors import CodelmError, warn
from codelm.generate.engine import generate
from codelm.generate.prompts import ChatFormatError, chat_stop_ids, chat_tokens, check_dialog
from codelm.generate.sampler import SamplingParams
from codelm.generate.weights import EngineConfig, load_for_engine


@dataclass
class ChatSettings:
    max_new_tokens: int = 512
    temperature: float = 0.2  # the reference's example_instructions.py: T 0.2, top-p 0.95
    top_p: float = 0.95
    seed: int | None = None


class LocalModel:
    """A model in this process."""

    def __init__(self, model, tokenizer, engine: EngineConfig | None = None):
        self.model, self.tokenizer, self.engine = model, tokenizer, engine

    def fits(self, messages: list[dict], settings: ChatSettings) -> bool:
        return len(chat_tokens(self.tokenizer, messages)) + settings.max_new_tokens <= self.model.config.max_seq_len

    def reply(self, messages: list[dict], settings: ChatSettings, on_text: Callable[[str], None]) -> str:
        tok = self.tokenizer
        params = SamplingParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                top_p=settings.top_p, seed=settings.seed)
        gen = generate(self.model, [chat_tokens(tok, messages)], params, stop_ids=chat_stop_ids(tok),
                       decode=tok.decode, on_text=lambda _row, text: on_text(text), engine=self.engine)[0]
        return gen.text


class ServerModel:
    """An OpenAI-compatible server: POST /v1/chat/completions with stream=true (server-sent events)."""

    def __init__(self, url: str, served_model: str | None = None, api_key: str | None = None,
                 timeout: float = 600.0):
        root = url.rstrip("/")
        if not root.startswith(("http://", "https://")):
            raise CodelmError(f"--url must be a server URL (http://...), got {url!r}")
        self.root = root[:-3] if root.endswith("/v1") else root
        self.api_key, self.timeout = api_key, timeout
        self.name = served_model or self._first_model()

    def _open(self, method: str, path: str, body: dict | None = None):
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.root + path, data=data, headers=headers, method=method)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read().decode("utf-8", "replace"))["error"]["message"]
            except Exception:  # noqa: BLE001 - a non-JSON error page
                message = str(e.reason)
            raise CodelmError(f"{self.root}{path}: HTTP {e.code}: {message}") from None
        except (urllib.error.URLError, OSError) as e:
            raise CodelmError(f"{self.root}{path}: cannot reach the server ({getattr(e, 'reason', e)})") from None

    def _first_model(self) -> str:
        with self._open("GET", "/v1/models") as resp:
            models = json.loads(resp.read().decode("utf-8")).get("data") or []
        if not models:
            raise CodelmError(f"{self.root}/v1/models lists no model; pass --served-model NAME")
        return models[0]["id"]

    def fits(self, messages: list[dict], settings: ChatSettings) -> bool:
        return True  # the server says when it does not (context_length_exceeded)

    def reply(self, messages: list[dict], settings: ChatSettings, on_text: Callable[[str], None]) -> str:
        body = {"model": self.name, "messages": messages, "max_tokens": settings.max_new_tokens,
                "temperature": settings.temperature, "top_p": settings.top_p, "stream": True}
        if settings.seed is not None:
            body["seed"] = settings.seed
        parts = []
        with self._open("POST", "/v1/chat/completions", body) as resp:
            for raw in resp:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                for choice in json.loads(data).get("choices", []):
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        parts.append(text)
                        on_text(text)
        return "".join(parts)


def _read_message(stdin: TextIO, stdout: TextIO, interactive: bool) -> str | None:
    lines = []
    while True:
        if interactive:
            stdout.write("> " if not lines else ". ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            return "\n".join(lines) if lines else None
        line = line.rstrip("\n")
        if line.endswith("\\"):
            lines.append(line[:-1])
            continue
        lines.append(line)
        return "\n".join(lines)


def chat_loop(engine, settings: ChatSettings, system: str | None = None, stdin: TextIO | None = None,
              stdout: TextIO | None = None, interactive: bool | None = None, stream: bool = True) -> list[dict]:
    """Read user messages until end of input; print each answer (streamed). Returns the final history.
    stdin/stdout default to sys.stdin/sys.stdout at the time of the call (so redirections apply)."""
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    if interactive is None:
        interactive = stdin.isatty()
    history: list[dict] = []

    def dialog(extra: list[dict]) -> list[dict]:
        return ([{"role": "system", "content": system}] if system else []) + history + extra

    while True:
        text = _read_message(stdin, stdout, interactive)
        if text is None:
            break
        command = text.strip()
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            history.clear()
            stdout.write("(history cleared)\n")
            continue
        if command == "/history":
            for m in dialog([]):
                stdout.write(f"[{m['role']}] {m['content']}\n")
            continue
        if command.startswith("/system"):
            system = command[len("/system"):].strip() or None
            history.clear()
            stdout.write(f"(system prompt {'set' if system else 'removed'}; history cleared)\n")
            continue
        if not command:
            continue
        user = {"role": "user", "content": text}
        try:
            check_dialog(dialog([user]))
            while history and not engine.fits(dialog([user]), settings):
                del history[:2]  # the oldest exchange
                stdout.write("(the oldest exchange was dropped to fit the context)\n")
            if not engine.fits(dialog([user]), settings):
                stdout.write("(this message does not fit the model's context; not sent)\n")
                continue
            if interactive:
                stdout.write("\n")
            chunks = []

            def show(piece: str) -> None:
                chunks.append(piece)
                if stream:
                    stdout.write(piece)
                    stdout.flush()

            answer = engine.reply(dialog([user]), settings, show)
        except ChatFormatError as e:
            stdout.write(f"({e})\n")
            continue
        except CodelmError as e:
            stdout.write(f"(error: {e})\n")
            continue
        if not stream:
            stdout.write(answer)
        stdout.write("\n\n" if interactive else "\n")
        stdout.flush()
        history += [user, {"role": "assistant", "content": answer}]
    return history


def chat_main(*, model: str | None = None, url: str | None = None, served_model: str | None = None,
              api_key: str | None = None, system: str | None = None, max_new_tokens: int = 512,
              temperature: float = 0.2, top_p: float = 0.95, seed: int | None = None, stream: bool = True,
              device: str | None = None, engine: EngineConfig | None = None) -> int:
    """Entry point of `codelm chat` (flags in codelm/cli.py): exactly one of `model` (a checkpoint run here)
    and `url` (an OpenAI-compatible server)."""
    if (model is None) == (url is None):
        raise CodelmError("give exactly one of --model DIR (run here) and --url URL (an OpenAI-compatible server)")
    if model is not None:
        engine = replace(engine or EngineConfig(), max_batch=1)
        loaded = load_for_engine(model, engine, device)
        talker = LocalModel(loaded.model, loaded.tokenizer, engine)
    else:
        talker = ServerModel(url, served_model, api_key or os.environ.get("OPENAI_API_KEY"))
    settings = ChatSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            seed=seed)
    if model is not None:
        context = loaded.config.max_seq_len
        if settings.max_new_tokens > context // 2:
            # The same rule as complete/infill: cut to what the context allows, with a warning (here half
            # of it, so that the conversation keeps room too).
            warn(f"--max-new-tokens {settings.max_new_tokens} leaves no room for the conversation in this model's "
                 f"maximum context length of {context} tokens; answers stop at {context // 2} tokens")
            settings.max_new_tokens = context // 2
    if sys.stdin.isatty():
        print("codelm chat: /system TEXT, /reset, /history, /exit (a line ending in \\ continues)", file=sys.stderr)
    chat_loop(talker, settings, system=system, stream=stream)
    return 0

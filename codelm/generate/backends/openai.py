"""The `openai` backend: any OpenAI-compatible server (vLLM, llama.cpp's llama-server, Ollama, `codelm serve`).

Routes:
  completion   POST /v1/completions with the prompt text
  chat         POST /v1/chat/completions with the prompt as the user's message (instruct models);
               the reply's code is extracted by the evaluation protocol
  infilling    --infill suffix    /v1/completions with `suffix` (codelm serve; OpenAI's own API).
                                  PSM only: the API has no field for the layout.
               --infill tokens    the PSM/SPM prompt built here as token ids with the model's
                                  tokenizer (`--tokenizer DIR`) and sent as a token-id prompt;
                                  vLLM documents `suffix` as unsupported, so use this for vLLM.
               --infill llama.cpp llama-server's native POST /infill (input_prefix, input_suffix).

Requests run `concurrency` at a time; connection errors, timeouts, 408, 429 and 500/502/503/504 answers
are retried with exponential backoff (1, 2, 4, ... seconds, `retries` times), except a 5xx whose body
says the request itself was invalid (it would fail the same way again); other answers are errors
at once, and every error quotes what the server answered.
Stop strings are sent to the server and also applied here, since servers differ in how they honour them.
Standard library only (urllib), so evaluating a remote model needs no extra package.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from codelm.errors import CodelmError, ConfigError
from codelm.generate.backends.base import Completion, Request
from codelm.generate.stops import cut_at_stop

INFILL_MODES = ("suffix", "tokens", "llama.cpp")
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
# Error types in a 5xx body that mean the request, not the server, is at fault (vLLM, OpenAI, llama.cpp).
DETERMINISTIC_ERRORS = {"invalid_request_error", "BadRequestError", "invalid_request", "not_supported_error"}


class ServerError(CodelmError):
    """The server refused a request (a 4xx answer other than rate limiting) or stayed unreachable."""


class OpenAIBackend:
    name = "openai"

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, chat: bool = False,
                 infill: str = "suffix", tokenizer=None, concurrency: int = 8, retries: int = 5,
                 backoff: float = 1.0, timeout: float = 600.0, batch_size: int = 16):
        if infill not in INFILL_MODES:
            raise ConfigError(f"--infill must be one of {', '.join(INFILL_MODES)}, got {infill!r}")
        root = url.rstrip("/")
        if not root.startswith(("http://", "https://")):
            raise ConfigError(f"--model for the openai backend must be a server URL (http://...), got {url!r}")
        self.root = root[:-3] if root.endswith("/v1") else root
        self.api_key, self.chat, self.infill = api_key, chat, infill
        self.concurrency, self.retries, self.backoff, self.timeout = max(1, concurrency), retries, backoff, timeout
        self.batch_size = batch_size
        if isinstance(tokenizer, (str, bytes)) or hasattr(tokenizer, "__fspath__"):
            from codelm.tokenizer import Tokenizer

            tokenizer = Tokenizer.load(tokenizer)
        self.tokenizer = tokenizer
        if infill == "tokens" and tokenizer is None:
            raise ConfigError("--infill tokens builds the infilling prompt here: give the model's --tokenizer DIR")
        self.model = model or self._first_model()

    def identity(self) -> dict:
        return {"backend": self.name, "url": self.root, "model": self.model, "chat": self.chat, "infill": self.infill}

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(self.root + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                detail, kind = _error_detail(e)
                if e.code not in RETRY_STATUS or kind in DETERMINISTIC_ERRORS:
                    raise ServerError(f"{method} {self.root + path}: the server answered HTTP {e.code}: "
                                      f"{detail}") from None
                last = f"the last answer was HTTP {e.code}: {detail}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as e:
                last = f"the last try failed: {getattr(e, 'reason', e)}"
        raise ServerError(f"{method} {self.root + path}: failed after {self.retries + 1} tries ({last})")

    def _first_model(self) -> str:
        models = self._request("GET", "/v1/models").get("data") or []
        if not models:
            raise ServerError(f"{self.root}/v1/models lists no model; pass --served-model NAME")
        return models[0]["id"]

    # ------------------------------------------------------------------ one request
    def _sampling(self, r: Request) -> dict:
        body = {"model": self.model, "max_tokens": r.max_new_tokens, "temperature": r.temperature, "top_p": r.top_p}
        if r.stop:
            body["stop"] = list(r.stop)
        if r.seed is not None:
            body["seed"] = r.seed
        return body

    def _one(self, r: Request) -> Completion:
        if r.infilling and self.infill == "llama.cpp":
            body = {"input_prefix": r.prompt, "input_suffix": r.suffix, "n_predict": r.max_new_tokens,
                    "temperature": r.temperature, "top_p": r.top_p, "stop": list(r.stop)}
            if r.seed is not None:
                body["seed"] = r.seed
            out = self._request("POST", "/infill", body)
            text, hit = cut_at_stop(out.get("content", ""), r.stop)
            return Completion(text, "stop" if hit or out.get("stopped_eos") or out.get("stopped_word") else "length",
                              out.get("tokens_predicted"))
        if self.chat and not r.infilling:
            body = {**self._sampling(r), "messages": [{"role": "user", "content": r.prompt}]}
            out = self._request("POST", "/v1/chat/completions", body)
            choice = out["choices"][0]
            text = choice["message"].get("content") or ""
        else:
            body = self._sampling(r)
            if not r.infilling:
                body["prompt"] = r.prompt
            elif self.infill == "tokens":
                from codelm.generate.prompts import infilling_tokens

                body["prompt"] = infilling_tokens(self.tokenizer, r.prompt, r.suffix, spm=r.spm)
            else:
                if r.spm:
                    raise ConfigError("the completions `suffix` field has no SPM layout: use --infill tokens "
                                      "(with --tokenizer) for SPM")
                body["prompt"], body["suffix"] = r.prompt, r.suffix
            out = self._request("POST", "/v1/completions", body)
            choice = out["choices"][0]
            text = choice.get("text") or ""
        text, hit = cut_at_stop(text, r.stop)
        usage = out.get("usage") or {}
        reason = "stop" if hit or choice.get("finish_reason") != "length" else "length"
        return Completion(text, reason, usage.get("completion_tokens"))

    def generate(self, requests: list[Request]) -> list[Completion]:
        if len(requests) == 1 or self.concurrency == 1:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self._one, requests))


def _error_detail(e: urllib.error.HTTPError) -> tuple[str, str | None]:
    """The server's error message (its JSON error's message, or the start of its page) and error type."""
    try:
        raw = e.read().decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - the connection broke while reading the error
        raw = ""
    try:
        body = json.loads(raw)
        err = body.get("error", body) if isinstance(body, dict) else body
        if isinstance(err, dict):
            return str(err.get("message", err)), err.get("type")
        return str(err), None
    except ValueError:  # a non-JSON error page
        text = " ".join(raw.split())[:300]
        reason = e.reason if isinstance(e.reason, str) else str(e)
        return (f"{reason}: {text}" if text else reason), None


def _error_message(e: urllib.error.HTTPError) -> str:
    return _error_detail(e)[0]

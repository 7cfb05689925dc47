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

Every request is made greedy-exact and engine-neutral (facts measured against vLLM 0.32.0, llama-cpp-python
0.3.36 and llama.cpp's llama-server, docs/serving.md):
  - at most MAX_STOP_STRINGS (4, the OpenAI API's limit and vLLM's default) stop strings go to the server;
    every stop string is applied here too, so the text equals a run that honoured them all;
  - neutral sampling fields are sent (top_k 0, min_p 0, repeat_penalty / repetition_penalty 1,
    frequency/presence penalties 0): llama-cpp-python's defaults (repeat_penalty 1.1, top_k 40, min_p 0.05)
    otherwise make `temperature: 0` non-greedy. Servers ignore fields they do not know (api.openai.com,
    which rejects them, gets none);
  - an infilling prompt sent as token ids carries `stop_token_ids: [EOT]` (vLLM would otherwise hide EOT
    as a special token and write on to EOS);
  - a server that cannot infill correctly is refused in one line before the first infilling request:
    llama-cpp-python's server (text prompts only; its `suffix` prompt puts token 0 where PRE/SUF/MID go;
    no /infill), and `--infill suffix` on vLLM (documented as unsupported).
Requests run `concurrency` at a time; connection errors, timeouts, 408, 429 and 502/503/504 answers are
retried with exponential backoff (1, 2, 4, ... seconds, `retries` times). Any other answer, a 500
included (a server's fault on this very request: retrying it gives the same answer), is an error at once
that quotes what the server answered.
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
from codelm.generate.prompts import infilling_tokens
from codelm.generate.stops import cut_at_stop
from codelm.tokenizer import Tokenizer

INFILL_MODES = ("suffix", "tokens", "llama.cpp")
RETRY_STATUS = {408, 429, 502, 503, 504}
MAX_STOP_STRINGS = 4
# Sampling fields at their neutral values, so that temperature 0 is plain argmax on every engine.
NEUTRAL_SAMPLING = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "repetition_penalty": 1.0,
                    "frequency_penalty": 0.0, "presence_penalty": 0.0}
LLAMA_CPP_PYTHON_REFUSAL = (
    "llama-cpp-python's server cannot infill correctly (its completions take text prompts only, its `suffix` "
    "prompt puts token 0 where PRE/SUF/MID go, it has no /infill): serve the GGUF with llama.cpp's "
    "llama-server and use --infill llama.cpp")
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
            tokenizer = Tokenizer.load(tokenizer)
        self.tokenizer = tokenizer
        if infill == "tokens" and tokenizer is None:
            raise ConfigError("--infill tokens builds the infilling prompt here: give the model's --tokenizer DIR")
        self.neutral = "api.openai.com" not in self.root  # the one server that rejects unknown fields
        self._engine: str | None = None
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

    def _models(self) -> list[dict]:
        models = self._request("GET", "/v1/models").get("data") or []
        if self._engine is None:
            self._engine = server_engine(models)
        return models

    def _first_model(self) -> str:
        models = self._models()
        if not models:
            raise ServerError(f"{self.root}/v1/models lists no model; pass --served-model NAME")
        return models[0]["id"]

    def check_infilling(self) -> None:
        """Refuse, in one line, a server and --infill mode known to infill wrongly or not at all."""
        if self._engine is None:
            self._models()
        if self._engine == "llama-cpp-python":
            raise ConfigError(f"{self.root}: {LLAMA_CPP_PYTHON_REFUSAL}")
        if self._engine == "vllm" and self.infill == "suffix":
            raise ConfigError(f"{self.root}: vLLM does not support the completions `suffix` field: use "
                              "--infill tokens --tokenizer DIR")

    # ------------------------------------------------------------------ one request
    def _sampling(self, r: Request) -> dict:
        body = {"model": self.model, "max_tokens": r.max_new_tokens, "temperature": r.temperature, "top_p": r.top_p}
        if r.stop:
            body["stop"] = list(r.stop)[:MAX_STOP_STRINGS]  # all of them are cut here
        if r.seed is not None:
            body["seed"] = r.seed
        if self.neutral:
            body.update(NEUTRAL_SAMPLING)
        return body

    def _one(self, r: Request) -> Completion:
        if r.infilling and self.infill == "llama.cpp":
            body = {**self._sampling(r), "input_prefix": r.prompt, "input_suffix": r.suffix,
                    "n_predict": r.max_new_tokens}
            del body["model"], body["max_tokens"]
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
                body["prompt"] = infilling_tokens(self.tokenizer, r.prompt, r.suffix, spm=r.spm)
                body["stop_token_ids"] = [self.tokenizer.eot_id]
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
        if any(r.infilling for r in requests):
            self.check_infilling()
        if len(requests) == 1 or self.concurrency == 1:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self._one, requests))


def server_engine(models: list[dict]) -> str | None:
    """Which engine answered /v1/models, from its model entries: "vllm", "llama-cpp-python",
    "llama.cpp" (llama-server), "codelm", or None for any other."""
    owners = {m.get("owned_by") for m in models if isinstance(m, dict)}
    if "vllm" in owners:
        return "vllm"
    if "llamacpp" in owners:
        return "llama.cpp"
    if "codelm" in owners:
        return "codelm"
    # llama_cpp.server answers {"id", "object": "model", "owned_by": "me", "permissions": []}
    if owners == {"me"} and all("permissions" in m for m in models):
        return "llama-cpp-python"
    return None


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

"""`codelm serve`: an OpenAI-compatible HTTP server for a codelm model (standard library only).

Routes:
  GET  /v1/models                the one model served (its name: --served-model-name, default the folder's name)
  POST /v1/completions           prompt (text, texts, token ids, or lists of token ids), `suffix` for
                                 infilling (PSM; `"spm": true` for suffix-prefix-middle), n, max_tokens,
                                 temperature, top_p, top_k, stop, seed, echo, stream (server-sent events)
  POST /v1/chat/completions      Llama 2 chat layout of the reference (doc §4.1):
                                 <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s><s>[INST] ...
  POST /infill                   llama.cpp's native infilling route (input_prefix, input_suffix, n_predict)
  GET  /health

Bad requests get a 4xx answer with an OpenAI-style JSON error body ({"error": {"message", "type",
"param", "code"}}); the server keeps serving after malformed bodies, oversized requests and clients
that hang up mid-stream (their rows stop when the client is gone). Every request runs in its own thread
and its rows join one continuously batched engine (codelm/generate/engine.py; `--max-batch` rows decode
together, a finished row's slot goes to the next waiting one), so concurrent requests share the batch
instead of waiting in line, and each row's answer is what the request alone would get.

(Over 500 lines: the OpenAI request checks, the three routes and the bridge between handler threads and
the engine's thread are one protocol, read together when a route changes.)
"""
from __future__ import annotations

import json
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from codelm.generate.engine import Engine, Row
from codelm.generate.prompts import UNSAFE_MESSAGE as UNSAFE_REQUEST_ERROR
from codelm.generate.prompts import ChatFormatError, chat_stop_ids, completion_tokens, infilling_tokens
from codelm.generate.prompts import chat_tokens as prompt_chat_tokens
from codelm.generate.sampler import Generation, SamplingParams
from codelm.generate.weights import EngineConfig, load_for_engine


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class ClientGone(Exception):
    """The client closed the connection while its answer was being streamed."""


@dataclass
class ServeLimits:
    max_body_bytes: int = 1 << 20  # larger request bodies get 413 without being read
    max_rows: int = 64  # prompts x n in one request
    max_stop: int = 16


# ----------------------------------------------------------------------------- request parsing
def _get(body: dict, name: str, types, default=None, check=None, what: str = ""):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ApiError(400, f"'{name}' must be {what or types}, got {json.dumps(value)}", param=name)
    if not isinstance(value, types):
        raise ApiError(400, f"'{name}' must be {what or types}, got {json.dumps(value)[:80]}", param=name)
    if check is not None and not check(value):
        raise ApiError(400, f"'{name}' is out of range: {json.dumps(value)[:80]} (must be {what})", param=name)
    return value


def chat_tokens(tokenizer, messages: list[dict]) -> list[int]:
    """The instruct prompt for an OpenAI-style message list (codelm.generate.prompts.chat_tokens:
    [INST] layout, or the 70B <step> layout), with content-part lists flattened and errors as 400s."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    flat = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported", param="messages")
            content = "".join(p["text"] for p in content)
        flat.append({**m, "content": content})
    try:
        return prompt_chat_tokens(tokenizer, flat)
    except ChatFormatError as e:
        raise ApiError(400, str(e), param="messages") from None


# ----------------------------------------------------------------------------- the model side
class ModelService:
    """Turns parsed requests into generations: every request's rows join one continuously batched engine,
    stepped by one background thread (up to EngineConfig.max_batch rows decode together; the rest wait
    for a free slot)."""

    def __init__(self, model, tokenizer, name: str, limits: ServeLimits | None = None,
                 engine: EngineConfig | None = None):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.limits = limits or ServeLimits()
        self.max_len = model.config.max_seq_len
        self.engine = Engine(model, engine)
        self.wake = threading.Condition()
        self.closed = False
        self.created = int(time.time())
        self.loop = threading.Thread(target=self._loop, name="codelm-engine", daemon=True)
        self.loop.start()

    def _loop(self) -> None:
        while True:
            with self.wake:
                while not self.engine.busy and not self.closed:
                    self.wake.wait()
                if self.closed and not self.engine.busy:
                    return
            try:
                self.engine.step()
            except Exception as e:  # noqa: BLE001 - fail the rows in flight, keep serving
                self.engine.fail_all(ApiError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error"))

    def check_model(self, body: dict) -> None:
        name = body.get("model")
        if name is None:
            raise ApiError(400, "you must provide a model parameter", param="model")
        if name != self.name:
            raise ApiError(404, f"The model '{name}' does not exist; this server serves '{self.name}'",
                           param="model", code="model_not_found")

    def sampling(self, body: dict, default_max: int):
        max_tokens = _get(body, "max_tokens", int, default_max, lambda v: v >= 0, "an integer >= 0")
        if "max_completion_tokens" in body:
            max_tokens = _get(body, "max_completion_tokens", int, max_tokens, lambda v: v >= 0, "an integer >= 0")
        temperature = float(_get(body, "temperature", (int, float), 1.0, lambda v: 0 <= v <= 2, "a number in [0, 2]"))
        top_p = float(_get(body, "top_p", (int, float), 1.0, lambda v: 0 < v <= 1, "a number in (0, 1]"))
        top_k = _get(body, "top_k", int, 0, lambda v: v >= 0, "an integer >= 0")
        seed = _get(body, "seed", int, None, lambda v: -2**63 <= v < 2**63, "a 64-bit integer")
        stop = body.get("stop")
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        elif not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
            raise ApiError(400, "'stop' must be a string or a list of strings", param="stop")
        if len(stop) > self.limits.max_stop:
            raise ApiError(400, f"'stop' has {len(stop)} strings; at most {self.limits.max_stop}", param="stop")
        n = _get(body, "n", int, 1, lambda v: 1 <= v <= self.limits.max_rows, f"1..{self.limits.max_rows}")
        if body.get("logprobs") not in (None, False) or body.get("best_of") not in (None, 1):
            raise ApiError(400, "logprobs and best_of are not supported by codelm serve", param="logprobs")
        return SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                              seed=seed, stop=tuple(stop)), n

    def completion_prompts(self, body: dict) -> tuple[list[list[int]], list[str], bool]:
        """Token prompts, their texts (for echo) and whether they are infilling prompts."""
        prompt = body.get("prompt")
        suffix = _get(body, "suffix", str, None, what="a string")
        spm = _get(body, "spm", bool, False, what="a boolean")
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = list(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                         for t in prompt):
            prompts = [list(prompt)]
        elif isinstance(prompt, list) and prompt and all(
                isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
                for p in prompt):
            prompts = [list(p) for p in prompt]
        else:
            raise ApiError(400, "'prompt' must be a string, a list of strings, a list of token ids or a list of "
                                "lists of token ids (non-empty)", param="prompt")
        tok = self.tokenizer
        out, texts = [], []
        for p in prompts:
            if isinstance(p, list):
                if suffix is not None:
                    raise ApiError(400, "'suffix' needs a text prompt (the prefix), not token ids", param="suffix")
                bad = [t for t in p if not 0 <= t < self.model.config.vocab_size]
                if bad:
                    raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{self.model.config.vocab_size - 1})",
                                   param="prompt")
                out.append(p)
                texts.append(tok.decode(p))
            elif suffix is not None:
                if not tok.has_infilling:
                    raise ApiError(400, f"model '{self.name}' has no infilling tokens: 'suffix' is not supported",
                                   param="suffix")
                out.append(infilling_tokens(tok, p, suffix, spm=spm))
                texts.append(p)
            else:
                out.append(completion_tokens(tok, p))
                texts.append(p)
        return out, texts, suffix is not None

    def check_length(self, prompts: list[list[int]], params) -> None:
        longest = max(len(p) for p in prompts)
        if longest + params.max_new_tokens > self.max_len:
            raise ApiError(400, f"This model's maximum context length is {self.max_len} tokens; the request asks "
                                f"for {longest} prompt tokens + {params.max_new_tokens} new tokens",
                           param="max_tokens", code="context_length_exceeded")

    def run(self, prompts: list[list[int]], params, stop_ids: set[int], decode, on_text=None) -> list[Generation]:
        """Generate the rows of one request (row i seeded with seed + i) in the shared engine. on_text(i, text)
        runs in this (the request's) thread; if it raises (the client is gone), the rows are cancelled."""
        if self.closed:
            raise ApiError(503, "the server is shutting down", code="server_shutting_down", kind="server_error")
        events: queue.Queue = queue.Queue()
        rows = [Row(p, params, frozenset(stop_ids), decode, params.max_new_tokens,
                    seed=None if params.seed is None else params.seed + i,
                    on_text=None if on_text is None else (lambda text, i=i: events.put((i, text))),
                    on_done=lambda row: events.put((None, row)))
                for i, p in enumerate(prompts)]
        for row in rows:
            self.engine.submit(row)
        with self.wake:
            self.wake.notify()
        try:
            left = len(rows)
            while left:
                i, item = events.get()
                if i is not None:
                    on_text(i, item)
                    continue
                left -= 1
                if item.error is not None:
                    raise item.error
        finally:
            for row in rows:
                row.cancelled = row.cancelled or row.result is None
        if any(row.result.finish_reason == "cancelled" for row in rows):
            raise ApiError(503, "the server is shutting down", code="server_shutting_down", kind="server_error")
        return [row.result for row in rows]

    def close(self) -> None:
        """Refuse new generations, cancel those in flight and wait for the engine's thread to stop.

        Handler threads are daemons (an idle keep-alive connection must not block shutdown), and a
        daemon thread still inside a torch op when the interpreter finalizes aborts the process
        (pytorch#38228: pthread_exit unwinding through a C++ destructor calls std::terminate)."""
        with self.wake:
            self.closed = True
            for row in list(self.engine.live) + list(self.engine.waiting):
                row.cancelled = True
            self.wake.notify()
        self.loop.join()


# ----------------------------------------------------------------------------- HTTP
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "codelm-serve"
    timeout = 120  # seconds a client may stall while sending its request

    @property
    def service(self) -> ModelService:
        return self.server.service

    def log_message(self, fmt, *args):
        if not getattr(self.server, "quiet", False):
            sys.stderr.write(f"codelm serve: {self.address_string()} {fmt % args}\n")

    # ------------------------------------------------------------------ responses
    def _send_json(self, status: int, obj: dict, close: bool = False) -> None:
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: ApiError, close: bool = False) -> None:
        try:
            self._send_json(err.status, err.body(), close=close)
        except OSError:
            self.close_connection = True

    def _start_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the stream ends when the connection does
        self.close_connection = True
        self.end_headers()

    def _event(self, obj) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj)
        try:
            self.wfile.write(f"data: {data}\n\n".encode("utf-8"))
            self.wfile.flush()
        except OSError:
            raise ClientGone() from None

    DRAIN_LIMIT = 64 << 20  # bytes of a refused body read and dropped, so its client sees the answer

    def _drain(self, length: int) -> None:
        """Read and drop a refused body (up to DRAIN_LIMIT bytes, 10 s without progress), after the answer
        went out: a client still sending then finishes and reads the 413 instead of a broken pipe."""
        left = min(length, max(self.DRAIN_LIMIT, 4 * self.service.limits.max_body_bytes))
        try:
            self.connection.settimeout(10)
            while left > 0:
                chunk = self.rfile.read1(min(left, 1 << 16)) if hasattr(self.rfile, "read1") else \
                    self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def _read_body(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "a Content-Length header is required", code="length_required")
        try:
            length = int(length)
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None
        if length < 0:
            raise ApiError(400, "Content-Length is negative")
        if length > self.service.limits.max_body_bytes:
            self._unread = length
            raise ApiError(413, f"request body of {length} bytes exceeds the limit of "
                                f"{self.service.limits.max_body_bytes} bytes", code="request_too_large")
        raw = self.rfile.read(length)
        self._body_read = len(raw) == length
        if len(raw) < length:
            raise ApiError(400, "request body ended before Content-Length bytes")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"malformed JSON body: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the JSON body must be an object")
        return body

    # ------------------------------------------------------------------ routes
    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [self._model_card()]})
        elif path == f"/v1/models/{self.service.name}":
            self._send_json(200, self._model_card())
        elif path.startswith("/v1/models/"):
            self._send_error(ApiError(404, f"The model '{path[11:]}' does not exist", code="model_not_found"))
        elif path == "/health":
            self._send_json(200, {"status": "ok"})
        else:
            self._send_error(ApiError(404, f"no route GET {path}", code="not_found"))

    def do_POST(self):
        path = self.path.split("?")[0].rstrip("/")
        routes = {"/v1/completions": self._completions, "/v1/chat/completions": self._chat, "/infill": self._infill}
        self._body_read = False
        self._unread = 0
        try:
            if path not in routes:
                raise ApiError(404, f"no route POST {path}", code="not_found")
            body = self._read_body()
            routes[path](body)
        except ApiError as e:
            # A body left unread (too large, no length, no route) would be taken for the next request: close.
            self._send_error(e, close=not self._body_read)
            if self._unread:
                self._drain(self._unread)
        except ClientGone:
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - one bad request must not take the server down
            self.log_message("internal error: %r", e)
            self._send_error(ApiError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error"),
                             close=True)

    def do_PUT(self):
        self._send_error(ApiError(405, "method not allowed", code="method_not_allowed"), close=True)

    do_DELETE = do_PATCH = do_PUT

    def _model_card(self) -> dict:
        return {"id": self.service.name, "object": "model", "created": self.service.created, "owned_by": "codelm"}

    # ------------------------------------------------------------------ /v1/completions
    def _completions(self, body: dict) -> None:
        svc = self.service
        svc.check_model(body)
        params, n = svc.sampling(body, default_max=16)
        prompts, texts, infilling = svc.completion_prompts(body)
        if len(prompts) * n > svc.limits.max_rows:
            raise ApiError(400, f"{len(prompts)} prompts x n={n} exceeds {svc.limits.max_rows} generations per request",
                           param="n")
        svc.check_length(prompts, params)
        echo = _get(body, "echo", bool, False, what="a boolean")
        stream = _get(body, "stream", bool, False, what="a boolean")
        rows = [p for p in prompts for _ in range(n)]
        row_texts = [t for t in texts for _ in range(n)]
        tok = svc.tokenizer
        stop_ids = {tok.eos_id} | ({tok.eot_id} if infilling and tok.eot_id is not None else set())
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(index, text, finish=None):
            return {"id": rid, "object": "text_completion", "created": created, "model": svc.name,
                    "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}]}

        if stream:
            self._start_events()
            if echo:
                for i, t in enumerate(row_texts):
                    self._event(chunk(i, t))
            gens = svc.run(rows, params, stop_ids, tok.decode_infilling,
                           on_text=lambda i, text: self._event(chunk(i, text)))
            for i, g in enumerate(gens):
                self._event(chunk(i, "", _finish(g)))
            self._event("[DONE]")
            return
        gens = svc.run(rows, params, stop_ids, tok.decode_infilling)
        choices = [{"index": i, "text": (row_texts[i] if echo else "") + g.text, "finish_reason": _finish(g),
                    "logprobs": None} for i, g in enumerate(gens)]
        self._send_json(200, {"id": rid, "object": "text_completion", "created": created, "model": svc.name,
                              "choices": choices, "usage": _usage(rows, gens)})

    # ------------------------------------------------------------------ /v1/chat/completions
    def _chat(self, body: dict) -> None:
        svc = self.service
        svc.check_model(body)
        params, n = svc.sampling(body, default_max=svc.max_len)
        prompt = chat_tokens(svc.tokenizer, body.get("messages"))
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            params.max_new_tokens = max(0, svc.max_len - len(prompt))  # OpenAI's default: up to the context
        svc.check_length([prompt], params)
        stream = _get(body, "stream", bool, False, what="a boolean")
        rows = [prompt] * n
        tok = svc.tokenizer
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(index, delta, finish=None):
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": svc.name,
                    "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]}

        if stream:
            self._start_events()
            for i in range(n):
                self._event(chunk(i, {"role": "assistant", "content": ""}))
            gens = svc.run(rows, params, chat_stop_ids(tok), tok.decode,
                           on_text=lambda i, text: self._event(chunk(i, {"content": text})))
            for i, g in enumerate(gens):
                self._event(chunk(i, {}, _finish(g)))
            self._event("[DONE]")
            return
        gens = svc.run(rows, params, chat_stop_ids(tok), tok.decode)
        choices = [{"index": i, "message": {"role": "assistant", "content": g.text}, "finish_reason": _finish(g),
                    "logprobs": None} for i, g in enumerate(gens)]
        self._send_json(200, {"id": rid, "object": "chat.completion", "created": created, "model": svc.name,
                              "choices": choices, "usage": _usage(rows, gens)})

    # ------------------------------------------------------------------ /infill (llama.cpp)
    def _infill(self, body: dict) -> None:
        svc = self.service
        tok = svc.tokenizer
        if not tok.has_infilling:
            raise ApiError(400, f"model '{svc.name}' has no infilling tokens")
        prefix = _get(body, "input_prefix", str, "", what="a string")
        suffix = _get(body, "input_suffix", str, "", what="a string")
        stop = body.get("stop") or []
        if not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
            raise ApiError(400, "'stop' must be a list of strings", param="stop")
        params = SamplingParams(
            max_new_tokens=_get(body, "n_predict", int, 128, lambda v: v >= 0, "an integer >= 0"),
            temperature=float(_get(body, "temperature", (int, float), 0.8, lambda v: v >= 0, "a number >= 0")),
            top_p=float(_get(body, "top_p", (int, float), 0.95, lambda v: 0 < v <= 1, "a number in (0, 1]")),
            seed=_get(body, "seed", int, None, lambda v: -2**63 <= v < 2**63, "a 64-bit integer"), stop=tuple(stop))
        prompt = infilling_tokens(tok, prefix, suffix)
        svc.check_length([prompt], params)
        g = svc.run([prompt], params, {tok.eot_id, tok.eos_id}, tok.decode_infilling)[0]
        self._send_json(200, {"content": g.text, "tokens_predicted": len(g.tokens), "tokens_evaluated": len(prompt),
                              "stopped_eos": g.finish_reason == "stop_token",
                              "stopped_word": g.finish_reason == "stop_string",
                              "stopped_limit": g.finish_reason == "length", "stopping_word": g.stop_hit or ""})


def _finish(g) -> str:
    return "length" if g.finish_reason == "length" else "stop"


def _usage(rows, gens) -> dict:
    prompt = sum(len(r) for r in rows)
    completion = sum(len(g.tokens) for g in gens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class CodelmHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: 16 clients connecting at once overflowed it, and a
    # connection the kernel then answered with a SYN cookie was sometimes reset (bench/serve.py).
    request_queue_size = 128

    def __init__(self, address, service: ModelService, quiet: bool = False):
        super().__init__(address, Handler)
        self.service, self.quiet = service, quiet

    def server_close(self) -> None:
        super().server_close()
        self.service.close()


def start_server(model, tokenizer, name: str, host: str = "127.0.0.1", port: int = 0, quiet: bool = True,
                 limits: ServeLimits | None = None, engine: EngineConfig | None = None
                 ) -> tuple[CodelmHTTPServer, threading.Thread]:
    """Serve in a background thread (port 0 picks a free port: read server.server_address)."""
    server = CodelmHTTPServer((host, port), ModelService(model, tokenizer, name, limits, engine), quiet=quiet)
    thread = threading.Thread(target=server.serve_forever, name="codelm-serve", daemon=True)
    thread.start()
    return server, thread


def serve_main(*, model: str, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
               max_body_bytes: int = 1 << 20, threads: int | None = None, quiet: bool = False,
               device: str | None = None, engine: EngineConfig | None = None) -> int:
    """Entry point of `codelm serve` (flags in codelm/cli.py): serves until interrupted."""
    if threads:
        torch.set_num_threads(threads)
    engine = engine or EngineConfig()
    loaded = load_for_engine(model, engine, device)
    name = name or Path(model).resolve().name
    limits = ServeLimits(max_body_bytes=max_body_bytes)
    service = ModelService(loaded.model, loaded.tokenizer, name, limits, engine)
    server = CodelmHTTPServer((host, port), service, quiet=quiet)
    host, port = server.server_address[:2]
    print(f"codelm serve: model '{name}' at http://{host}:{port}/v1, {service.engine.weights.plan.describe()}, "
          f"{engine.max_batch} rows per batch (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
